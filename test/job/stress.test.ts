import { writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startMirror, type CopyMode, type MirrorJob } from '../../src/index.js';
import type { UnsafeTestHooks } from '../../src/job/TrackedDevice.js';
import { applyWrites, firstDifference, randomWriterHere, randomWriterThread, type RecordedWrite } from '../helpers/mirror.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const scratch = useScratchDir();

interface StressCase {
  readonly seed: number;
  readonly copyMode: CopyMode;
  readonly granularity: number;
  /** Writers on worker threads besides the two on the main thread. */
  readonly threads: number;
  readonly hooks?: UnsafeTestHooks;
  /** Writes per writer (later writes to a granule re-mark it and can hide an earlier loss). */
  readonly writes?: number;
  /** Image size in granules (a larger image keeps the bulk copy, and its races, going longer). */
  readonly granules?: number;
  /** Let the tuner move chunk size and depth (default: fixed small chunks, so copies and writes overlap from the start). */
  readonly adaptive?: boolean;
  /**
   * Hold the writers until the copy is under way: on a loaded machine the copy workers can take
   * longer to start than the writers take to finish, and then no write meets a copy. `'copied'`
   * holds them until a copy has ended, so the workers are running (a copy in flight may not have
   * reached its worker yet).
   */
  readonly writeOnceCopying?: boolean | 'copied';
  /** Check that the job had a first pass, which the writes met. */
  readonly meetFirstPass?: boolean;
}

/**
 * Mirrors a random image while writers on the main thread and on worker threads write random
 * blocks into their own regions, completes as soon as the job is ready (writers still going:
 * their later writes land on the target after the pivot), and returns the first offset where the
 * target differs from what the writes say it must hold (-1: identical).
 */
async function stress(c: StressCase): Promise<number> {
  const dir = await scratch();
  const size = (c.granules ?? 128) * c.granularity + 1234; // not a multiple of the granularity
  const initial = randomBytes(size);
  await writeFile(join(dir, 'src.img'), initial);
  const job = await startMirror({
    source: join(dir, 'src.img'),
    target: join(dir, 'dst.img'),
    copyMode: c.copyMode,
    granularity: c.granularity,
    chunkSize: c.granularity * 2,
    bufferSize: c.granularity * 8,
    workers: 2,
    adaptive: c.adaptive ?? false,
    unsafeTestHooks: c.hooks,
  });
  if (c.writeOnceCopying) await copyUnderWay(job, c.writeOnceCopying === 'copied');
  const writers = 2 + c.threads;
  const region = Math.floor(size / writers);
  const plan = (i: number) => ({
    seed: c.seed * 101 + i,
    count: c.writes ?? WRITES,
    from: i * region,
    to: i === writers - 1 ? size : (i + 1) * region,
    maxLength: 3 * c.granularity,
  });
  const running: Promise<RecordedWrite[]>[] = [randomWriterHere(job.device, plan(0)), randomWriterHere(job.device, plan(1))];
  for (let i = 2; i < writers; i++) running.push(randomWriterThread(job.tracker(), plan(i)));
  await new Promise<void>((resolve) => job.once('ready', () => resolve()));
  const outcome = await job.complete();
  expect(outcome.status).toBe('completed');
  if (c.meetFirstPass) expect(job.firstPass?.bytesCopied).toBeGreaterThan(0);
  const writes = await Promise.all(running);
  await job.close();
  return firstDifference(join(dir, 'dst.img'), applyWrites(initial, ...writes));
}

/** Resolves once the job has copied something, or (`copied` false) has a copy in flight. */
async function copyUnderWay(job: MirrorJob, copied: boolean): Promise<void> {
  for (;;) {
    const { inFlightBytes, bytesCopied } = job.progress();
    if (bytesCopied > 0 || (!copied && inFlightBytes > 0)) return;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** `npm run test:stress` runs many more seeds and writes than the default run. */
const SEED_COUNT = Number(process.env.BLOCKMIRROR_STRESS_SEEDS ?? 3);
const WRITES = Number(process.env.BLOCKMIRROR_STRESS_WRITES ?? 200);
const SEEDS = Array.from({ length: SEED_COUNT }, (_, i) => i + 1);

describe('mirror stress: target equals what was written, with writers on three threads', () => {
  for (const copyMode of ['background', 'write-blocking'] as const) {
    for (const granularity of [4 * KiB, 64 * KiB]) {
      it.each(SEEDS)(`${copyMode}, granularity ${granularity / KiB} KiB, seed %i`, async (seed) => {
        expect(await stress({ seed, copyMode, granularity, threads: 2 })).toBe(-1);
      });
    }
  }

  it.each(SEEDS)('write-blocking with main-thread writers only (covered bits cleared by writes), seed %i', async (seed) => {
    expect(await stress({ seed, copyMode: 'write-blocking', granularity: 4 * KiB, threads: 0 })).toBe(-1);
  });

  // A full background mirror starts on the bulk copy's engine: these writes meet its streams.
  it.each(SEEDS)('background, writes starting once the first pass is copying, seed %i', async (seed) => {
    expect(await stress({ seed, copyMode: 'background', granularity: 4 * KiB, granules: 8192, threads: 2, writeOnceCopying: true, meetFirstPass: true })).toBe(-1);
  });

  for (const copyMode of ['background', 'write-blocking'] as const) {
    it.each(SEEDS)(`${copyMode} with the tuner moving chunk size and depth, seed %i`, async (seed) => {
      expect(await stress({ seed, copyMode, granularity: 4 * KiB, granules: 1024, threads: 2, adaptive: true })).toBe(-1);
    });
  }
});

/** Runs seeds until one shows a difference; the stress test must catch each broken invariant. */
async function caught(base: Omit<StressCase, 'seed'>, seeds = 12): Promise<boolean> {
  for (let seed = 100; seed < 100 + seeds; seed++) if ((await stress({ writes: 200, writeOnceCopying: 'copied', ...base, seed })) !== -1) return true;
  return false;
}

// Each hook waits 30 ms between the steps it breaks (src/util/preemption.ts): long enough for the
// other side to act in between even on a loaded machine.
describe('the stress test catches a broken invariant', () => {
  it('1 reversed: marking before the write', async () => {
    // Each write waits in the hook: fewer writes keep the run short, and an idle copier takes each.
    expect(await caught({ copyMode: 'background', granularity: 4 * KiB, threads: 2, writes: 20, hooks: { markBeforeWrite: true } })).toBe(true);
  });

  it('2 reversed: clearing after the read', async () => {
    expect(await caught({ copyMode: 'background', granularity: 4 * KiB, threads: 2, hooks: { clearAfterRead: true } })).toBe(true);
  });

  it('3 dropped: write-blocking writes not waiting for copies', async () => {
    expect(await caught({ copyMode: 'write-blocking', granularity: 4 * KiB, threads: 0, hooks: { skipWriteBlockingWait: true } })).toBe(true);
  });
});

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rename, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ErrorCode,
  readJobState,
  recoverJobState,
  resumeMirror,
  startMirror,
  StateFiles,
  type BlockDevice,
  type JobPhase,
  type MirrorJob,
  type MirrorOptions,
} from '../../src/index.js';
import { openDevice } from '../../src/io/openDevice.js';
import { writeJobState } from '../../src/state/JobStateFile.js';
import { hashFile } from '../../src/util/imageTools.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();

async function setup(size = 8 * MiB): Promise<{ dir: string; src: string; dst: string; state: string }> {
  const dir = await scratch();
  await writeFile(join(dir, 'src.img'), randomBytes(size));
  return { dir, src: join(dir, 'src.img'), dst: join(dir, 'dst.img'), state: join(dir, 'state') };
}

function ready(job: MirrorJob): Promise<void> {
  return job.status === 'ready' ? Promise.resolve() : new Promise((resolve) => job.once('ready', () => resolve()));
}

async function phaseOf(dir: string): Promise<JobPhase> {
  return (await readJobState(dir)).phase;
}

async function mirror(options: Partial<MirrorOptions> & Pick<MirrorOptions, 'source' | 'target'>): Promise<MirrorJob> {
  return startMirror({ workers: 1, checkpointInterval: 20, ...options });
}

/** Waits until the state directory's phase is `phase` (its writes for ready and copying are not awaited by the job). */
async function untilPhase(dir: string, phase: JobPhase): Promise<void> {
  while ((await phaseOf(dir)) !== phase) await new Promise((r) => setTimeout(r, 5));
}

describe('a mirror with a state directory', () => {
  it('records copying, then ready, then pivoted with the target current', async () => {
    const { src, dst, state } = await setup();
    const job = await mirror({ source: src, target: dst, state });
    expect(['copying', 'ready']).toContain(await phaseOf(state));
    await ready(job);
    await untilPhase(state, 'ready');
    await job.complete();
    const record = await readJobState(state);
    expect(record).toMatchObject({ phase: 'pivoted', current: 'target', source: src, target: dst });
    await job.close();
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('says which image is current at every write: none reaches the target alone before the directory says pivoted', async () => {
    const { src, dst, state } = await setup();
    await writeFile(dst, Buffer.alloc(8 * MiB));
    const inner = await openDevice({ kind: 'file', path: dst, role: 'target', writable: true });
    let job: MirrorJob | undefined;
    const violations: string[] = [];
    const write = async (data: Uint8Array, offset: number): Promise<void> => {
      // A write after the pivot is the application's, to the target alone.
      if (job?.device.pivoted) {
        const phase = (JSON.parse(readFileSync(join(state, StateFiles.state), 'utf8')) as { phase: string }).phase;
        if (phase !== 'pivoted') violations.push(`write at ${offset} while the directory said ${phase}`);
      }
      await inner.write(data, offset);
    };
    const target = new Proxy(inner, {
      get: (t, name) => (name === 'write' ? write : typeof Reflect.get(t, name) === 'function' ? Reflect.get(t, name).bind(t) : Reflect.get(t, name)),
    }) as BlockDevice;
    job = await startMirror({ source: src, target: dst, targetDevice: target, workers: 0, state });
    await ready(job);
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) await job.device.write(randomBytes(4096), (i % 64) * 4096);
    })();
    await job.complete();
    await new Promise((r) => setTimeout(r, 20));
    writing = false;
    await writer;
    await job.close();
    await inner.close();
    expect(violations).toEqual([]);
  });

  it('records a cancel in sync as stopped and consistent, with the source current', async () => {
    const { src, dst, state } = await setup();
    const job = await mirror({ source: src, target: dst, state });
    await ready(job);
    await job.cancel();
    await job.close();
    expect(await readJobState(state)).toMatchObject({ phase: 'stopped', consistent: true, current: 'source' });
  });

  it('keeps tracking writes after a cancel until closed, and a resume copies just those', async () => {
    const { src, dst, state } = await setup();
    const job = await mirror({ source: src, target: dst, state });
    await ready(job);
    await job.cancel();
    await job.device.write(randomBytes(4096), 3 * MiB);
    await job.close();
    const recovered = await recoverJobState(state);
    expect(recovered.leftBytes).toBe(4096);
    const resumed = await resumeMirror({ state, workers: 1 });
    await ready(resumed);
    expect(resumed.progress().bytesCopied).toBe(4096);
    await resumed.complete();
    await resumed.close();
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('covers every write with its bitmap file and activity log while it runs', async () => {
    const { src, dst, state } = await setup();
    const job = await mirror({ source: src, target: dst, state });
    await ready(job);
    const offsets = [0, 5 * MiB + 4096, 7 * MiB];
    for (const offset of offsets) await job.device.write(randomBytes(4096), offset);
    // No checkpoint needed: the log names the extents of the writes since the last one.
    const recovered = await recoverJobState(state);
    for (const offset of offsets) expect(recovered.bitmap!.isDirty(offset, 4096)).toBe(true);
    await job.cancel();
    await job.close();
  });

  it('fails the job when a checkpoint cannot be saved, rather than go on uncovered', async () => {
    const { src, dst, state } = await setup();
    const job = await mirror({ source: src, target: dst, state });
    await ready(job);
    await rename(state, `${state}.gone`); // the directory is gone from under the job
    await job.device.write(randomBytes(4096), 0).catch(() => undefined);
    const outcome = await job.result;
    expect(outcome.status).toBe('failed');
    expect(outcome.status === 'failed' && (outcome.error as { code?: string }).code).toBe(ErrorCode.JOB_FAILED);
    await job.close().catch(() => undefined);
  });

  it('refuses to hand writer threads a tracker: the activity log sees writes on the job\'s thread only', async () => {
    const { src, dst, state } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, state });
    expect(() => job.tracker()).toThrow(expect.objectContaining({ code: ErrorCode.JOB_STATE }));
    await job.cancel({ force: true });
    await job.close();
  });
});

describe('starting and resuming from a state directory', () => {
  it('refuses to start a new job in a directory that holds a job', async () => {
    const { src, dst, state } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, state });
    await job.cancel({ force: true });
    await job.close();
    await expect(mirror({ source: src, target: dst, state })).rejects.toMatchObject({ code: ErrorCode.STATE_EXISTS });
  });

  it('refuses to resume a job that pivoted: the target is current', async () => {
    const { src, dst, state } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, state });
    await ready(job);
    await job.complete();
    await job.close();
    await expect(resumeMirror({ state })).rejects.toMatchObject({ code: ErrorCode.JOB_STATE });
  });

  it('refuses to resume a job whose process is alive', async () => {
    const { src, dst, state } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, state });
    await job.cancel({ force: true });
    await job.close();
    const other = spawn('sleep', ['30']);
    try {
      const record = await readJobState(state);
      await writeJobState(state, { ...record, owner: { ...record.owner, pid: other.pid! } });
      await expect(resumeMirror({ state })).rejects.toMatchObject({ code: ErrorCode.STATE_IN_USE });
    } finally {
      other.kill();
    }
  });

  it('refuses a source that is not the job\'s', async () => {
    const { dir, src, dst, state } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, state });
    await job.cancel({ force: true });
    await job.close();
    await expect(resumeMirror({ state, source: join(dir, 'other.img') })).rejects.toMatchObject({ code: ErrorCode.STATE_MISMATCH });
  });

  it('refuses a source that changed size since', async () => {
    const { src, dst, state } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, state });
    await job.cancel({ force: true });
    await job.close();
    await truncate(src, 2 * MiB);
    await expect(resumeMirror({ state })).rejects.toMatchObject({ code: ErrorCode.STATE_MISMATCH });
  });

  it('resumes a job stopped before ready and ends with the target equal to the source', async () => {
    const { src, dst, state } = await setup();
    const job = await mirror({ source: src, target: dst, state, speed: 2 * MiB });
    await new Promise((r) => setTimeout(r, 100));
    await job.cancel({ force: true });
    await job.close();
    const left = (await recoverJobState(state)).leftBytes;
    expect(left).toBeGreaterThan(0);
    const resumed = await resumeMirror({ state, workers: 1 });
    await ready(resumed);
    expect(resumed.progress().bytesCopied).toBeLessThanOrEqual(left);
    await resumed.complete();
    await resumed.close();
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });
});

import { writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cancelAll, completeAll, ErrorCode, startMirror, type MirrorJob } from '../../src/index.js';
import { hashFile } from '../../src/util/imageTools.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();

async function twoJobs(): Promise<{ jobs: MirrorJob[]; paths: Array<{ src: string; dst: string }> }> {
  const dir = await scratch();
  const paths = [0, 1].map((i) => ({ src: join(dir, `src${i}.img`), dst: join(dir, `dst${i}.img`) }));
  for (const p of paths) await writeFile(p.src, randomBytes(2 * MiB));
  const jobs = await Promise.all(paths.map((p) => startMirror({ source: p.src, target: p.dst, workers: 1 })));
  await Promise.all(jobs.map((j) => new Promise((r) => j.once('ready', r))));
  return { jobs, paths };
}

/** Writes to both disks, one after the other, until stopped: a two-disk application. */
function lockstepWriter(jobs: MirrorJob[]): { stop: () => Promise<number> } {
  let running = true;
  let rounds = 0;
  const loop = (async () => {
    while (running) {
      const stamp = Buffer.alloc(4096);
      stamp.writeUInt32LE(++rounds);
      await jobs[0]!.device.write(stamp, 0);
      await jobs[1]!.device.write(stamp, 0);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return rounds;
    },
  };
}

describe('transactions', () => {
  it('completeAll pivots every job, and the targets hold the sources of one point in time', async () => {
    const { jobs, paths } = await twoJobs();
    const writer = lockstepWriter(jobs);
    await new Promise((r) => setTimeout(r, 50));
    const outcomes = await completeAll(jobs);
    await writer.stop();
    expect(outcomes.map((o) => o.status)).toEqual(['completed', 'completed']);
    // After the pivot both disks' writes went to the targets: they read the same last stamp.
    const [a, b] = await Promise.all(paths.map(async (p) => (await import('node:fs/promises')).readFile(p.dst)));
    expect(a!.readUInt32LE(0)).toBe(b!.readUInt32LE(0));
    await Promise.all(jobs.map((j) => j.close()));
  });

  it('cancelAll once ready leaves consistent targets of one point in time', async () => {
    const { jobs, paths } = await twoJobs();
    const writer = lockstepWriter(jobs);
    await new Promise((r) => setTimeout(r, 50));
    const outcomes = await cancelAll(jobs);
    await writer.stop();
    expect(outcomes.every((o) => o.status === 'cancelled' && o.consistent)).toBe(true);
    const stamps = await Promise.all(paths.map(async (p) => (await import('node:fs/promises')).readFile(p.dst).then((b) => b.readUInt32LE(0))));
    // The writer writes disk 0 then disk 1: at any instant disk 0's stamp is equal or one ahead.
    expect(stamps[0]! - stamps[1]!).toBeGreaterThanOrEqual(0);
    expect(stamps[0]! - stamps[1]!).toBeLessThanOrEqual(1);
    await Promise.all(jobs.map((j) => j.close()));
  });

  it('completeAll refuses, touching no job, when one is not ready', async () => {
    const { jobs } = await twoJobs();
    await jobs[1]!.pause();
    await expect(completeAll(jobs)).rejects.toMatchObject({ code: ErrorCode.JOB_STATE });
    expect(jobs[0]!.status).toBe('ready');
    jobs[1]!.resume();
    await cancelAll(jobs, { force: true });
    await Promise.all(jobs.map((j) => j.close()));
  });

  it('a writer thread waits while the job quiesces, then writes to the target after the pivot', async () => {
    const dir = await scratch();
    await writeFile(join(dir, 'src.img'), randomBytes(MiB));
    const job = await startMirror({ source: join(dir, 'src.img'), target: join(dir, 'dst.img') });
    await new Promise((r) => job.once('ready', r));
    const { TrackedWriter } = await import('../../src/index.js');
    const writer = TrackedWriter.open(job.tracker());
    await job.complete();
    await writer.write(Buffer.alloc(512, 9), 0);
    await writer.close();
    expect(await hashFile(join(dir, 'dst.img'))).not.toBe(await hashFile(join(dir, 'src.img')));
    await job.close();
  });
});

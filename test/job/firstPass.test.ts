import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startMirror, type MirrorJob, type MirrorOptions } from '../../src/index.js';
import { FaultPlan, FaultyDevice } from '../../src/io/FaultyDevice.js';
import { FileDevice } from '../../src/io/FileDevice.js';
import { hashFile, makeSampleImage } from '../../src/util/imageTools.js';
import { seededRandom } from '../fixtures/prng.mjs';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const MiB = 1 << 20;
const scratch = useScratchDir();

async function setup(size: number, fill: (size: number) => Buffer = randomBytes): Promise<{ src: string; dst: string }> {
  const dir = await scratch();
  await writeFile(join(dir, 'src.img'), fill(size));
  return { src: join(dir, 'src.img'), dst: join(dir, 'dst.img') };
}

function ready(job: MirrorJob): Promise<unknown> {
  return new Promise((resolve) => job.once('ready', resolve));
}

/** Completes a job once ready; the target must then equal the source. */
async function completeAndCompare(job: MirrorJob, src: string, dst: string): Promise<void> {
  if (job.status !== 'ready') await ready(job);
  expect(await job.complete()).toMatchObject({ status: 'completed' });
  await job.close();
  expect(await hashFile(dst)).toBe(await hashFile(src));
}

/**
 * `lanes` writers through `job.device`, each `writes` writes of 1 to `maxBlocks` 4 KiB blocks at
 * random `alignment`-aligned offsets, a `zeroShare` of them all zeros.
 */
async function writeLanes(
  job: MirrorJob,
  size: number,
  random: () => number,
  o: { lanes: number; writes: number; maxBlocks: number; alignment: number; zeroShare: number },
): Promise<void> {
  const lane = async (): Promise<void> => {
    for (let i = 0; i < o.writes; i++) {
      const length = (1 + Math.floor(random() * o.maxBlocks)) * 4 * KiB;
      const offset = Math.floor(random() * ((size - length) / o.alignment)) * o.alignment;
      await job.device.write(random() < o.zeroShare ? Buffer.alloc(length) : randomBytes(length), offset);
    }
  };
  await Promise.all(Array.from({ length: o.lanes }, lane));
}

async function mirror(options: Partial<MirrorOptions> & Pick<MirrorOptions, 'source' | 'target'>): Promise<MirrorJob> {
  return startMirror({ workers: 2, ...options });
}

describe('a full mirror\'s first pass', () => {
  it('copies the whole image on the bulk copy\'s engine while nothing writes, and says how it read and wrote', async () => {
    const { src, dst } = await setup(16 * MiB);
    const job = await mirror({ source: src, target: dst });
    await completeAndCompare(job, src, dst);
    const pass = job.firstPass!;
    expect(pass.endedBy).toBeUndefined();
    expect(pass.bytesCopied).toBe(16 * MiB);
    expect(['buffered', 'direct']).toContain(pass.io.plan.read);
    expect(['buffered', 'direct']).toContain(pass.io.plan.write);
    expect(pass.io.reason.length).toBeGreaterThan(0);
  });

  /** Mirrors an image of `size` with `holeFraction` holes under four lanes of writes of data and zeros, and checks the target. */
  async function mirrorUnderWrites(size: number, holeFraction: number): Promise<MirrorJob> {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    await makeSampleImage(src, { size, holeFraction });
    const job = await mirror({ source: src, target: dst });
    await writeLanes(job, size, seededRandom(7), { lanes: 4, writes: 60, maxBlocks: 64, alignment: 4096, zeroShare: 0.3 });
    await completeAndCompare(job, src, dst);
    return job;
  }

  it('measures its plans under writes of data and zeros, and ends equal (an image large enough for trials)', async () => {
    const job = await mirrorUnderWrites(320 * MiB, 0.25);
    expect(job.firstPass!.io.basis).toBe('measured');
  });

  it('scans a mostly-hole image for holes under writes of data and zeros, writing with O_DIRECT, and ends equal', async () => {
    const job = await mirrorUnderWrites(320 * MiB, 0.75);
    expect(job.firstPass!.io.plan.write).toBe('direct');
    expect(job.firstPass!.io.reason).toMatch(/holes found by O_DIRECT scans/);
  });

  it('goes on while the application writes, and the mirror\'s copier then carries what the writes dirtied behind it', async () => {
    const { src, dst } = await setup(64 * MiB);
    const job = await mirror({ source: src, target: dst });
    await job.device.write(randomBytes(MiB), 63 * MiB);
    await job.device.write(randomBytes(MiB), 0);
    await completeAndCompare(job, src, dst);
    expect(job.firstPass!.endedBy).toBeUndefined();
  });

  it('hands over to the mirror\'s copier when a speed limit is set, which the copier keeps to', async () => {
    const { src, dst } = await setup(64 * MiB);
    const job = await mirror({ source: src, target: dst });
    job.setSpeed(1 << 30);
    await completeAndCompare(job, src, dst);
    expect(job.firstPass!.endedBy).toBe('a speed limit was set');
  });

  for (const seed of [1, 2, 3]) {
    it(`ends equal under eight lanes of random writes that start with it (seed ${seed})`, async () => {
      const size = 32 * MiB;
      const { src, dst } = await setup(size);
      const job = await mirror({ source: src, target: dst });
      // Zeros now and then: a target assumed zero must still get them where data was copied.
      await writeLanes(job, size, seededRandom(seed), { lanes: 8, writes: 40, maxBlocks: 16, alignment: 512, zeroShare: 0.2 });
      await completeAndCompare(job, src, dst);
      expect(job.firstPass).toBeDefined();
    });
  }

  it('ends when the job is paused, and the copier finishes after resume', async () => {
    const { src, dst } = await setup(64 * MiB);
    const job = await mirror({ source: src, target: dst });
    await job.pause();
    expect(job.progress().inFlightBytes).toBe(0);
    job.resume();
    await completeAndCompare(job, src, dst);
    expect(job.firstPass!.endedBy).toBe('the job was paused');
  });

  it('sends a failed flush of its own to the target\'s error policy: with report, the job fails instead of going ready', async () => {
    const { src, dst } = await setup(16 * MiB);
    await writeFile(dst, Buffer.alloc(16 * MiB));
    const plan = new FaultPlan();
    plan.fail('flush', 'EIO', { count: 1 });
    const target = new FaultyDevice(await FileDevice.open({ kind: 'file', path: dst, writable: true, role: 'target' }), plan);
    const job = await mirror({ source: src, target: dst, targetDevice: target, onTargetError: 'report' });
    const first = await Promise.race([job.result.then(() => 'concluded'), ready(job).then(() => 'ready')]);
    expect(first).toBe('concluded');
    expect((await job.result).status).toBe('failed');
    expect(plan.failures('flush')).toBe(1);
    expect(job.firstPass?.endedBy).toMatch(/^its flush of the target failed: /);
    await job.close();
    await target.close();
  });

  it('runs on worker threads of its own where the mirror\'s copier copies on the coordinator (a daemon\'s job), and ends equal under writes', async () => {
    const { src, dst } = await setup(64 * MiB);
    const job = await mirror({ source: src, target: dst, workers: 0, firstPassWorkers: 2 });
    await job.device.write(randomBytes(MiB), 63 * MiB);
    await job.device.write(randomBytes(MiB), 0);
    await completeAndCompare(job, src, dst);
    expect(job.firstPass!.bytesCopied).toBeGreaterThan(0);
  });

  it('writes the zeros of the source over an existing target, which it does not assume zero', async () => {
    const half = (size: number): Buffer => Buffer.concat([randomBytes(size / 2), Buffer.alloc(size / 2)]);
    const { src, dst } = await setup(16 * MiB, half);
    await writeFile(dst, randomBytes(16 * MiB));
    const job = await mirror({ source: src, target: dst });
    await completeAndCompare(job, src, dst);
    expect(job.firstPass!.endedBy).toBeUndefined();
  });

  for (const [name, options] of [
    ['sync none', { sync: 'none' }],
    ['write-blocking mode', { copyMode: 'write-blocking' }],
    ['a speed limit', { speed: 256 * MiB }],
    ['no worker threads', { workers: 0 }],
  ] as const) {
    it(`is not run with ${name}`, async () => {
      const { src, dst } = await setup(4 * MiB);
      const job = await mirror({ source: src, target: dst, ...options });
      await ready(job);
      await job.complete();
      await job.close();
      expect(job.firstPass).toBeUndefined();
    });
  }
});

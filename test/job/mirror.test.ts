import { readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DirtyBitmap, ErrorCode, JobStatus, startMirror, type MirrorJob, type MirrorOptions } from '../../src/index.js';
import { hashFile } from '../../src/util/imageTools.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const MiB = 1 << 20;
const scratch = useScratchDir();

async function setup(size = 4 * MiB): Promise<{ dir: string; src: string; dst: string; initial: Buffer }> {
  const dir = await scratch();
  const initial = randomBytes(size);
  await writeFile(join(dir, 'src.img'), initial);
  return { dir, src: join(dir, 'src.img'), dst: join(dir, 'dst.img'), initial };
}

function once<T>(job: MirrorJob, event: 'ready' | 'completed' | 'cancelled'): Promise<T> {
  return new Promise((resolve) => job.once(event, (e: unknown) => resolve(e as T)));
}

function until(pred: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const t = setInterval(() => pred() && (clearInterval(t), resolve()), 5);
  });
}

async function mirror(options: Partial<MirrorOptions> & Pick<MirrorOptions, 'source' | 'target'>): Promise<MirrorJob> {
  return startMirror({ workers: 2, ...options });
}

describe('startMirror', () => {
  it('reaches ready with offset equal to len, and completes to a target equal to the source', async () => {
    const { src, dst } = await setup();
    const job = await mirror({ source: src, target: dst });
    const ready = await once<{ len: number; offset: number }>(job, 'ready');
    expect(ready.offset).toBe(ready.len);
    expect(job.progress().synced).toBe(true);
    const outcome = await job.complete();
    expect(outcome).toMatchObject({ status: 'completed', pivoted: true });
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('goes through created, running, ready, waiting, pending, concluded and null', async () => {
    const { src, dst } = await setup(MiB);
    const job = await mirror({ source: src, target: dst });
    const seen: string[] = [JobStatus.CREATED, job.status];
    job.on('status-change', ({ status }) => seen.push(status));
    await once(job, 'ready');
    await job.complete();
    expect(seen).toEqual(['created', 'running', 'ready', 'waiting', 'pending', 'concluded', 'null']);
    await job.close();
  });

  it('after complete, a write lands on the target and not on the source', async () => {
    const { src, dst, initial } = await setup(MiB);
    const job = await mirror({ source: src, target: dst });
    await once(job, 'ready');
    await job.complete();
    await job.device.write(Buffer.alloc(4096, 7), 8192);
    expect((await readFile(dst)).subarray(8192, 8192 + 4096).every((b) => b === 7)).toBe(true);
    expect((await readFile(src)).subarray(8192, 8192 + 4096).equals(initial.subarray(8192, 8192 + 4096))).toBe(true);
    expect((await job.device.read(8192, 4)).equals(Buffer.alloc(4, 7))).toBe(true);
    await job.close();
  });

  it('cancel once ready leaves the target equal to the source as of the cancel, and later writes go to the source only', async () => {
    const { src, dst } = await setup();
    const job = await mirror({ source: src, target: dst });
    await once(job, 'ready');
    await job.device.write(randomBytes(100 * KiB), 123_456);
    const cancelled = once<{ consistent: boolean }>(job, 'cancelled');
    const outcome = await job.cancel();
    expect(outcome).toMatchObject({ status: 'cancelled', consistent: true });
    expect((await cancelled).consistent).toBe(true);
    expect(await hashFile(dst)).toBe(await hashFile(src));
    const before = await hashFile(dst);
    await job.device.write(randomBytes(4096), 0);
    expect(await hashFile(dst)).toBe(before);
    expect(await hashFile(src)).not.toBe(before);
    await job.close();
  });

  it('cancel before ready stops at once and says the target is not consistent', async () => {
    const { src, dst } = await setup(16 * MiB);
    const job = await mirror({ source: src, target: dst, speed: MiB });
    const outcome = await job.cancel();
    expect(outcome).toMatchObject({ status: 'cancelled', consistent: false });
    expect(job.status).toBe('null');
    await job.close();
  });

  it('force-cancel once ready says the target is not consistent', async () => {
    const { src, dst } = await setup(MiB);
    const job = await mirror({ source: src, target: dst });
    await once(job, 'ready');
    expect(await job.cancel({ force: true })).toMatchObject({ status: 'cancelled', consistent: false });
    await job.close();
  });

  it('refuses complete before ready with BM_ERR_JOB_STATE', async () => {
    const { src, dst } = await setup(16 * MiB);
    const job = await mirror({ source: src, target: dst, speed: MiB });
    await expect(job.complete()).rejects.toMatchObject({ code: ErrorCode.JOB_STATE });
    await job.cancel();
    await job.close();
  });

  it('holds all copy I/O while paused, and finishes after resume', async () => {
    const { src, dst } = await setup(16 * MiB);
    const job = await mirror({ source: src, target: dst, speed: 4 * MiB, chunkSize: 256 * KiB });
    await new Promise((r) => setTimeout(r, 100));
    await job.pause();
    expect(job.status).toBe('paused');
    const copied = job.progress().bytesCopied;
    expect(job.progress().inFlightBytes).toBe(0);
    await new Promise((r) => setTimeout(r, 300));
    expect(job.progress().bytesCopied).toBe(copied);
    expect(job.progress().dirtyBytes).toBeGreaterThan(0);
    job.setSpeed(0);
    job.resume();
    await once(job, 'ready');
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('setSpeed lifts a limit at once, also while the copier is waiting on it', async () => {
    const { src, dst } = await setup(8 * MiB);
    const job = await mirror({ source: src, target: dst, speed: 64 * KiB, chunkSize: 64 * KiB });
    await new Promise((r) => setTimeout(r, 150));
    job.setSpeed(0);
    expect(job.speed).toBe(0);
    await once(job, 'ready'); // at 64 KiB/s this would take two minutes
    await job.complete();
    await job.close();
  });

  it('switches to write-blocking while running, and still ends equal', async () => {
    const { src, dst } = await setup();
    const job = await mirror({ source: src, target: dst, speed: 8 * MiB });
    await job.changeCopyMode('write-blocking');
    expect(job.copyMode).toBe('write-blocking');
    // On a busy machine the bulk copy may be in sync before the writes are done.
    const ready = once(job, 'ready');
    for (let i = 0; i < 20; i++) await job.device.write(randomBytes(10_000), i * 150_000);
    job.setSpeed(0);
    await ready;
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('refuses to switch from write-blocking back to background', async () => {
    const { src, dst } = await setup(MiB);
    const job = await mirror({ source: src, target: dst, copyMode: 'write-blocking' });
    await expect(job.changeCopyMode('background')).rejects.toMatchObject({ code: ErrorCode.JOB_STATE });
    await job.cancel({ force: true });
    await job.close();
  });

  it('with sync none copies only what is written after the start', async () => {
    const { src, dst } = await setup();
    const job = await mirror({ source: src, target: dst, sync: 'none', granularity: 64 * KiB });
    await job.device.write(randomBytes(1000), 70 * KiB); // inside granule 1
    await job.device.write(randomBytes(64 * KiB), 3 * 64 * KiB); // exactly granule 3
    // Nothing was dirty at the start, so the job may be ready before the writes: wait for the copies.
    await until(() => job.status === 'ready' && job.progress().synced);
    expect(job.progress().bytesCopied).toBe(2 * 64 * KiB);
    await job.complete();
    await job.close();
  });

  it('with sync bitmap copies only the extents the bitmap marks', async () => {
    const { src, dst } = await setup();
    const start = DirtyBitmap.create(4 * MiB, 64 * KiB);
    start.mark(0, 1);
    start.mark(MiB, 200 * KiB); // granules 16..19
    const job = await mirror({ source: src, target: dst, sync: 'bitmap', bitmap: start, granularity: 64 * KiB });
    await once(job, 'ready');
    expect(job.progress().bytesCopied).toBe(5 * 64 * KiB);
    await job.complete();
    const [a, b] = await Promise.all([readFile(src), readFile(dst)]);
    expect(b.subarray(MiB, MiB + 256 * KiB).equals(a.subarray(MiB, MiB + 256 * KiB))).toBe(true);
    await job.close();
  });

  it.each([
    ['a granularity that is not a power of two', { granularity: 3000 }],
    ['a buffer smaller than a chunk', { bufferSize: 1000 }],
    ['an unknown error policy', { onTargetError: 'retry' as never }],
    ['sync bitmap without a bitmap', { sync: 'bitmap' as const }],
    ['a copy share over 1', { minCopyShare: 1.5 }],
  ])('refuses %s with BM_ERR_INVALID_OPTION, creating nothing', async (_name, bad) => {
    const { src, dst } = await setup(MiB);
    await expect(startMirror({ source: src, target: dst, ...bad })).rejects.toMatchObject({ code: ErrorCode.INVALID_OPTION });
    await expect(readFile(dst)).rejects.toThrow();
  });

  it.each([
    ['a number as the source', (dst: string) => ({ source: 7 as never, target: dst }), /source must be .*not number 7/],
    ['an object that is no device spec as the target', (_dst: string, src: string) => ({ source: src, target: { path: 'x' } as never }), /target must be .*device spec/],
  ])('refuses %s with BM_ERR_INVALID_OPTION naming the argument', async (_name, options, message) => {
    const { src, dst } = await setup(MiB);
    await expect(startMirror(options(dst, src))).rejects.toMatchObject({ code: ErrorCode.INVALID_OPTION, message: expect.stringMatching(message) });
  });

  it('refuses positional arguments with BM_ERR_INVALID_OPTION, saying it takes one object', async () => {
    await expect((startMirror as (...a: unknown[]) => Promise<unknown>)('src.img', 'dst.img')).rejects.toMatchObject({
      code: ErrorCode.INVALID_OPTION,
      message: expect.stringMatching(/one options object/),
    });
  });

  it('refuses a target smaller than the source with BM_ERR_SIZE_MISMATCH', async () => {
    const { src, dst } = await setup(MiB);
    await writeFile(dst, Buffer.alloc(1000));
    await expect(startMirror({ source: src, target: dst })).rejects.toMatchObject({ code: ErrorCode.SIZE_MISMATCH });
  });

  it('refuses a device write past the end with EINVAL', async () => {
    const { src, dst } = await setup(MiB);
    const job = await mirror({ source: src, target: dst });
    await expect(job.device.write(Buffer.alloc(10), MiB - 5)).rejects.toMatchObject({ code: ErrorCode.IO, errno: 'EINVAL' });
    await job.cancel({ force: true });
    await job.close();
  });
});

import { randomBytes } from 'node:crypto';
import { open, readFile, stat, writeFile, mkdir, symlink, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { copyImage, ErrorCode, AbortError, type CopyProgress } from '../../src/index.js';
import { allocatedBytes, hashFile, makeSampleImage } from '../../src/util/imageTools.js';
import { sparseFile, writeRandomFile } from '../helpers/files.js';
import { directIoUnavailable, useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const noDirect = await directIoUnavailable();

async function expectSame(a: string, b: string, length?: number): Promise<void> {
  expect(await hashFile(b, length)).toBe(await hashFile(a, length));
}

describe('copyImage', () => {
  it('copies an image whose size is not a multiple of the chunk size', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 5 * MiB + 12345);
    const result = await copyImage(src, join(dir, 'dst.img'), { chunkSize: 1 * MiB, workers: 2 });
    await expectSame(src, join(dir, 'dst.img'));
    expect((await stat(join(dir, 'dst.img'))).size).toBe(5 * MiB + 12345);
    expect(result).toMatchObject({ bytes: 5 * MiB + 12345, targetCreated: true, bytesZero: 0 });
  });

  it('copies a 0-byte image to a 0-byte target', async () => {
    const dir = await scratch();
    await writeFile(join(dir, 'src.img'), '');
    const result = await copyImage(join(dir, 'src.img'), join(dir, 'dst.img'));
    expect(result.bytes).toBe(0);
    expect((await stat(join(dir, 'dst.img'))).size).toBe(0);
  });

  it('keeps a sparse source sparse on a new target', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await makeSampleImage(src, { size: 32 * MiB, holeFraction: 0.75 });
    const result = await copyImage(src, join(dir, 'dst.img'), { chunkSize: 256 * 1024 });
    await expectSame(src, join(dir, 'dst.img'));
    expect(result.bytesZero).toBe(24 * MiB);
    expect(await allocatedBytes(join(dir, 'dst.img'))).toBeLessThanOrEqual((await allocatedBytes(src)) + MiB);
  });

  it.skipIf(noDirect !== undefined)(`moves large requests in O_DIRECT phases yet finds zeros at the chunk size, so the target stays sparse${noDirect ? ` (skipped: ${noDirect})` : ''}`, async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    // Holes in 1 MiB runs between data, inside each 8 MiB request.
    await makeSampleImage(src, { size: 24 * MiB + 4096, holeFraction: 0.5 });
    const result = await copyImage(src, join(dir, 'dst.img'), { writeMode: 'direct', readMode: 'buffered' });
    await expectSame(src, join(dir, 'dst.img'));
    expect(result.bytesZero).toBe(12 * MiB);
    expect(await allocatedBytes(join(dir, 'dst.img'))).toBeLessThanOrEqual((await allocatedBytes(src)) + MiB);
  });

  it.skipIf(noDirect !== undefined)(`scans a mostly-hole source with O_DIRECT and copies the data it finds, as the plan reads it${noDirect ? ` (skipped: ${noDirect})` : ''}`, async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    // Data in runs of 3 MiB at 64 MiB strides: a hole scan's streams go from holes to data and back.
    await sparseFile(src, 256 * MiB + 512);
    const fh = await open(src, 'r+');
    for (let at = 5 * MiB; at < 256 * MiB; at += 64 * MiB) await fh.write(randomBytes(3 * MiB), 0, 3 * MiB, at);
    await fh.close();
    for (const options of [{}, { readMode: 'direct', writeMode: 'direct' }] as const) {
      const dst = join(dir, `dst-${Object.keys(options).length}.img`);
      const result = await copyImage(src, dst, options);
      await expectSame(src, dst);
      expect(result.bytesWritten).toBe(12 * MiB);
      expect(result.io.reason).toMatch(/holes found by O_DIRECT scans/);
      expect(await allocatedBytes(dst)).toBeLessThanOrEqual((await allocatedBytes(src)) + MiB);
    }
  });

  it('overwrites data on an existing target where the source has zeros', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    await makeSampleImage(src, { size: 8 * MiB, holeFraction: 0.5 });
    await writeRandomFile(dst, 8 * MiB);
    const result = await copyImage(src, dst, { chunkSize: MiB });
    await expectSame(src, dst);
    expect(result.targetCreated).toBe(false);
  });

  it('leaves the holes of an existing sparse target unwritten where the source has zeros', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    await makeSampleImage(src, { size: 16 * MiB, holeFraction: 0.5 });
    await writeFile(dst, '');
    await truncate(dst, 16 * MiB);
    const result = await copyImage(src, dst, { chunkSize: MiB });
    await expectSame(src, dst);
    expect(result.bytesWritten).toBe(8 * MiB);
    expect(await allocatedBytes(dst)).toBeLessThanOrEqual((await allocatedBytes(src)) + MiB);
  });

  it('copies into a larger existing target, leaving the bytes past the source untouched', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    await writeRandomFile(src, 3 * MiB);
    const before = await writeRandomFile(dst, 4 * MiB);
    await copyImage(src, dst);
    await expectSame(src, dst, 3 * MiB);
    expect((await readFile(dst)).subarray(3 * MiB).equals(before.subarray(3 * MiB))).toBe(true);
  });

  it('copies through O_DIRECT with an unaligned tail', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 3 * MiB + 1000);
    await copyImage(src, join(dir, 'dst.img'), { direct: true, chunkSize: MiB });
    await expectSame(src, join(dir, 'dst.img'));
  });

  it('reports progress that grows to the whole image', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 4 * MiB);
    const seen: CopyProgress[] = [];
    await copyImage(src, join(dir, 'dst.img'), { chunkSize: 256 * 1024, onProgress: (p) => seen.push(p), progressInterval: 1 });
    const done = seen.map((p) => p.bytesDone);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(seen.at(-1)).toMatchObject({ bytesDone: 4 * MiB, bytesTotal: 4 * MiB, etaSeconds: 0 });
  });

  it('stops on abort with an AbortError that says how far it got', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 16 * MiB);
    const controller = new AbortController();
    const copy = copyImage(src, join(dir, 'dst.img'), {
      chunkSize: 64 * 1024,
      speed: 4 * MiB, // slow enough that the abort lands mid-copy
      onProgress: (p) => p.bytesDone > 0 && controller.abort(),
      progressInterval: 10,
      signal: controller.signal,
    });
    const err = await copy.then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(AbortError);
    expect((err as AbortError).progress!.bytesDone).toBeGreaterThan(0);
    expect((err as AbortError).progress!.bytesDone).toBeLessThan(16 * MiB);
  });
});

describe('copyImage refuses bad input, touching nothing', () => {
  it('a missing source', async () => {
    const dir = await scratch();
    await expect(copyImage(join(dir, 'nope.img'), join(dir, 'dst.img'))).rejects.toMatchObject({ code: ErrorCode.SOURCE_NOT_FOUND });
    await expect(stat(join(dir, 'dst.img'))).rejects.toThrow();
  });

  it('a source that is a directory', async () => {
    const dir = await scratch();
    await expect(copyImage(dir, join(dir, 'dst.img'))).rejects.toMatchObject({ code: ErrorCode.SOURCE_NOT_AN_IMAGE });
  });

  it('a target that is a directory', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 4096);
    await mkdir(join(dir, 'sub'));
    await expect(copyImage(join(dir, 'src.img'), join(dir, 'sub'))).rejects.toMatchObject({ code: ErrorCode.TARGET_IS_DIRECTORY });
  });

  it('a target smaller than the source', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    const before = await writeRandomFile(join(dir, 'dst.img'), MiB);
    await expect(copyImage(join(dir, 'src.img'), join(dir, 'dst.img'))).rejects.toMatchObject({ code: ErrorCode.SIZE_MISMATCH });
    expect((await readFile(join(dir, 'dst.img'))).equals(before)).toBe(true);
  });

  it('the same file as source and target, even through a symlink', async () => {
    const dir = await scratch();
    const before = await writeRandomFile(join(dir, 'src.img'), MiB);
    await symlink(join(dir, 'src.img'), join(dir, 'link.img'));
    await expect(copyImage(join(dir, 'src.img'), join(dir, 'link.img'))).rejects.toMatchObject({ code: ErrorCode.SAME_FILE });
    expect((await readFile(join(dir, 'src.img'))).equals(before)).toBe(true);
  });

  it('a target in a directory that does not exist', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 4096);
    await expect(copyImage(join(dir, 'src.img'), join(dir, 'no/such/dst.img'))).rejects.toMatchObject({ code: ErrorCode.TARGET_UNWRITABLE });
  });

  it.each([
    ['a chunk size that is not a power of two', { chunkSize: 3000 * 1024 }],
    ['a chunk size below the minimum', { chunkSize: 512 }],
    ['a zero queue depth', { queueDepth: 0 }],
    ['a negative speed', { speed: -1 }],
    ['a fractional worker count', { workers: 1.5 }],
  ])('%s', async (_name, options) => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 4096);
    await expect(copyImage(join(dir, 'src.img'), join(dir, 'dst.img'), options)).rejects.toMatchObject({ code: ErrorCode.INVALID_OPTION });
    await expect(stat(join(dir, 'dst.img'))).rejects.toThrow();
  });

  it('takes its arguments as one object, the shape startMirror takes', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 2 * MiB + 5);
    const result = await copyImage({ source: src, target: join(dir, 'dst.img'), chunkSize: MiB });
    expect(result.bytes).toBe(2 * MiB + 5);
    await expectSame(src, join(dir, 'dst.img'));
  });

  it.each([
    ['an object as the source', () => copyImage({ path: 'x' } as never, 'dst.img'), /source must be a path or an NBD URI .*not an object/],
    ['a number as the target', () => copyImage('src.img', 42 as never), /target must be .*not number 42/],
    ['an empty source', () => copyImage({ source: '', target: 'dst.img' }), /source must be .*not an empty string/],
    ['an object without a target', () => copyImage({ source: 'src.img' } as never), /target must be .*not undefined/],
    ['options that are not an object', () => copyImage('src.img', 'dst.img', 'fast' as never), /options must be an object, not 'fast'/],
  ])('refuses %s with BM_ERR_INVALID_OPTION naming the argument', async (_name, call, message) => {
    await expect(call()).rejects.toMatchObject({ code: ErrorCode.INVALID_OPTION, message: expect.stringMatching(message) });
  });

  it('measures its I/O plans on a copy large enough to, says which it chose and why, and ends with the target equal', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await makeSampleImage(src, { size: 320 * MiB + 4096 + 512, holeFraction: 0.5 });
    const result = await copyImage(src, join(dir, 'dst.img'));
    await expectSame(src, join(dir, 'dst.img'));
    expect(result.io.basis).toBe('measured');
    expect(result.io.reason).toMatch(/^(measured|switched)/);
    // Both write modes; the read modes are tried only on a copy of 2 GiB or more (MIN_READ_TRIAL_BYTES).
    const tried = new Set(result.io.trials.map((t) => `${t.plan.read}/${t.plan.write}`));
    expect(tried).toEqual(new Set(['buffered/direct', 'buffered/buffered']));
    expect(result.io.trials.every((t) => t.seconds > 0 && t.rate > 0)).toBe(true);
    expect(await allocatedBytes(join(dir, 'dst.img'))).toBeLessThanOrEqual((await allocatedBytes(src)) + MiB);
  });

  it.each([
    ['O_DIRECT on both sides', { readMode: 'direct', writeMode: 'direct' }],
    ['O_DIRECT reads, page-cache writes', { readMode: 'direct', writeMode: 'buffered' }],
    ['page-cache reads, O_DIRECT writes', { readMode: 'buffered', writeMode: 'direct' }],
  ] as const)('copies with %s when asked, unaligned tail included', async (_name, modes) => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 5 * MiB + 12345);
    const result = await copyImage(src, join(dir, 'dst.img'), { chunkSize: MiB, ...modes });
    await expectSame(src, join(dir, 'dst.img'));
    expect(result.io).toMatchObject({ basis: 'asked', plan: { read: modes.readMode, write: modes.writeMode } });
  });

  it('refuses an unknown I/O mode with BM_ERR_INVALID_OPTION', async () => {
    await expect(copyImage('src.img', 'dst.img', { readMode: 'mmap' as never })).rejects.toMatchObject({
      code: ErrorCode.INVALID_OPTION,
      message: expect.stringMatching(/readMode must be auto, buffered or direct/),
    });
  });
});

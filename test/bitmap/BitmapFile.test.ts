import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  BITMAP_HEADER_BYTES,
  loadBitmap,
  markInUse,
  readBitmapHeader,
  saveBitmap,
} from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { BitmapError, ErrorCode } from '../../src/errors.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();
const G = 65536;
/** 100 bits, the last covering 100 bytes: body of 4 words. */
const SIZE = 99 * G + 100;

/** Header field offsets (docs/bitmap-format.md). */
const AT = { version: 8, flags: 16, granularity: 20, size: 24, headerCrc: 60 };

function sampleBitmap(): DirtyBitmap {
  const bm = DirtyBitmap.create(SIZE, G);
  for (const b of [0, 31, 32, 64, 99]) bm.markBits(b, 1);
  return bm;
}

function setBits(bm: DirtyBitmap): number[] {
  const bits: number[] = [];
  for (let b = bm.nextDirty(0); b >= 0; b = bm.nextDirty(b + 1)) bits.push(b);
  return bits;
}

async function savedSample(): Promise<string> {
  const path = join(await scratch(), 'sample.bmp');
  await saveBitmap(path, sampleBitmap());
  return path;
}

/** Rewrites a saved file through `change`, fixing the header checksum afterwards when asked. */
async function tamper(path: string, change: (bytes: Buffer) => Buffer | void, fixHeaderCrc = false): Promise<void> {
  const original: Buffer = await readFile(path);
  const bytes = change(original) ?? original;
  if (fixHeaderCrc) bytes.writeUInt32LE(crc32(bytes.subarray(0, AT.headerCrc)), AT.headerCrc);
  await writeFile(path, bytes);
}

async function loadError(path: string): Promise<unknown> {
  return loadBitmap(path).then(
    () => undefined,
    (err: unknown) => err,
  );
}

describe('saveBitmap and loadBitmap', () => {
  it('round-trips the bits and the geometry', async () => {
    const { bitmap, header, consistent } = await loadBitmap(await savedSample());
    expect(setBits(bitmap)).toEqual([0, 31, 32, 64, 99]);
    expect(bitmap.count()).toBe(5);
    expect(consistent).toBe(true);
    expect(header).toMatchObject({ version: 1, inUse: false, granularity: G, size: SIZE, bitCount: 100, bodyBytes: 16 });
  });

  it('writes a header and a body of whole 32-bit words', async () => {
    const path = await savedSample();
    expect((await readFile(path)).length).toBe(BITMAP_HEADER_BYTES + 16);
  });

  it('bumps the generation with each save', async () => {
    const path = await savedSample();
    expect((await readBitmapHeader(path)).generation).toBe(1);
    const header = await saveBitmap(path, sampleBitmap());
    expect(header.generation).toBe(2);
    expect((await readBitmapHeader(path)).generation).toBe(2);
  });

  it('writes the generation it is given', async () => {
    const path = join(await scratch(), 'g.bmp');
    await saveBitmap(path, sampleBitmap(), { generation: 41 });
    expect((await readBitmapHeader(path)).generation).toBe(41);
  });

  it('round-trips the bitmap of a zero-byte image', async () => {
    const path = join(await scratch(), 'empty-image.bmp');
    await saveBitmap(path, DirtyBitmap.create(0));
    const { bitmap, consistent } = await loadBitmap(path);
    expect([bitmap.bitCount, bitmap.count(), consistent]).toEqual([0, 0, true]);
  });

  it('replaces an existing file and leaves no temporary file behind', async () => {
    const dir = await scratch();
    const path = join(dir, 'b.bmp');
    await saveBitmap(path, sampleBitmap());
    await saveBitmap(path, DirtyBitmap.create(SIZE, G));
    expect(await readdir(dir)).toEqual(['b.bmp']);
    expect((await loadBitmap(path)).bitmap.count()).toBe(0);
  });

  it('a save while another handle marks keeps every bit set before it began', async () => {
    const bm = sampleBitmap();
    const writer = DirtyBitmap.fromShared(bm.share());
    const path = join(await scratch(), 'live.bmp');
    const saving = saveBitmap(path, bm, { inUse: true });
    writer.markBits(50, 1);
    await saving;
    const { bitmap } = await loadBitmap(path, { trustInUse: true });
    expect(setBits(bitmap)).toEqual(expect.arrayContaining([0, 31, 32, 64, 99]));
  });

  it('reports a missing file as an I/O error', async () => {
    const err = await loadError(join(await scratch(), 'none.bmp'));
    expect(err).toMatchObject({ code: ErrorCode.IO, errno: 'ENOENT' });
  });
});

describe('the in-use flag', () => {
  it('a file saved in use loads inconsistent and all dirty', async () => {
    const path = join(await scratch(), 'u.bmp');
    await saveBitmap(path, sampleBitmap(), { inUse: true });
    const { bitmap, consistent, header } = await loadBitmap(path);
    expect(consistent).toBe(false);
    expect(header.inUse).toBe(true);
    expect(bitmap.count()).toBe(100);
    expect(bitmap.dirtyBytes()).toBe(SIZE);
  });

  it('trustInUse loads the stored bits of a file in use, still inconsistent', async () => {
    const path = join(await scratch(), 'u.bmp');
    await saveBitmap(path, sampleBitmap(), { inUse: true });
    const { bitmap, consistent } = await loadBitmap(path, { trustInUse: true });
    expect(consistent).toBe(false);
    expect(setBits(bitmap)).toEqual([0, 31, 32, 64, 99]);
  });

  it('markInUse sets the flag on disk, keeping the bits and the generation', async () => {
    const path = await savedSample();
    const header = await markInUse(path);
    expect(header.inUse).toBe(true);
    const loaded = await loadBitmap(path, { trustInUse: true });
    expect(loaded.header).toMatchObject({ inUse: true, generation: 1 });
    expect(setBits(loaded.bitmap)).toEqual([0, 31, 32, 64, 99]);
  });

  it('a clean save clears the flag that markInUse set', async () => {
    const path = await savedSample();
    await markInUse(path);
    await saveBitmap(path, sampleBitmap());
    expect((await loadBitmap(path)).consistent).toBe(true);
  });

  it('markInUse refuses a corrupt header', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void (b[AT.size] ^= 1));
    await expect(markInUse(path)).rejects.toMatchObject({ code: ErrorCode.BITMAP_HEADER_CORRUPT });
  });
});

describe('loading a damaged or wrong file', () => {
  it('a flipped byte in the body is BM_ERR_BITMAP_CORRUPT', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void (b[BITMAP_HEADER_BYTES + 5] ^= 0x10));
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_CORRUPT });
  });

  it('a flipped byte in the header is BM_ERR_BITMAP_HEADER_CORRUPT', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void (b[AT.granularity + 2] ^= 0x01));
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_HEADER_CORRUPT });
  });

  it('a file cut short in its body is BM_ERR_BITMAP_TRUNCATED', async () => {
    const path = await savedSample();
    await tamper(path, (b) => b.subarray(0, b.length - 1));
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_TRUNCATED });
  });

  it('a file cut short in its header is BM_ERR_BITMAP_TRUNCATED', async () => {
    const path = await savedSample();
    await tamper(path, (b) => b.subarray(0, 30));
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_TRUNCATED });
  });

  it('a zero-length file is BM_ERR_BITMAP_EMPTY', async () => {
    const path = join(await scratch(), 'zero.bmp');
    await writeFile(path, '');
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_EMPTY });
  });

  it('a file with another magic is BM_ERR_BITMAP_FOREIGN', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void b.write('QFI\xfbXXXX', 0, 'latin1'));
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_FOREIGN });
  });

  it('a short file that is not a bitmap is BM_ERR_BITMAP_FOREIGN', async () => {
    const path = join(await scratch(), 'short.bmp');
    await writeFile(path, 'hi\n');
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_FOREIGN });
  });

  it('a file of another format version is BM_ERR_BITMAP_VERSION', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void b.writeUInt32LE(2, AT.version), true);
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_VERSION });
  });

  it('a header with flags this version does not know is BM_ERR_BITMAP_VERSION', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void b.writeUInt32LE(0x80, AT.flags), true);
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_VERSION });
  });

  it('a checksummed header whose fields disagree is BM_ERR_BITMAP_HEADER_CORRUPT', async () => {
    const path = await savedSample();
    await tamper(path, (b) => void b.writeUInt32LE(3000, AT.granularity), true);
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_HEADER_CORRUPT });
  });

  it('bytes after the body are BM_ERR_BITMAP_CORRUPT', async () => {
    const path = await savedSample();
    await tamper(path, (b) => Buffer.concat([b, Buffer.alloc(4)]));
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_CORRUPT });
  });

  it('bits set past the end of the image are BM_ERR_BITMAP_CORRUPT, even with a matching checksum', async () => {
    const path = await savedSample();
    await tamper(path, (b) => {
      b[b.length - 1]! |= 0x80;
      b.writeUInt32LE(crc32(b.subarray(BITMAP_HEADER_BYTES)), 56);
    }, true);
    expect(await loadError(path)).toMatchObject({ code: ErrorCode.BITMAP_CORRUPT });
  });

  it('another image size or granularity than expected is BM_ERR_BITMAP_GEOMETRY', async () => {
    const path = await savedSample();
    await expect(loadBitmap(path, { size: SIZE + 1 })).rejects.toMatchObject({ code: ErrorCode.BITMAP_GEOMETRY });
    await expect(loadBitmap(path, { granularity: G * 2 })).rejects.toMatchObject({ code: ErrorCode.BITMAP_GEOMETRY });
    await expect(loadBitmap(path, { size: SIZE, granularity: G })).resolves.toMatchObject({ consistent: true });
  });

  it('rejects every single flipped byte anywhere in the file with a BitmapError', async () => {
    const path = await savedSample();
    const original = await readFile(path);
    for (let at = 0; at < original.length; at++) {
      const damaged = Buffer.from(original);
      damaged[at]! ^= 0x04;
      await writeFile(path, damaged);
      const err = await loadError(path);
      expect(err, `byte ${at}`).toBeInstanceOf(BitmapError);
    }
  });

  it.each([-1, 1.5, 2 ** 53])('refuses to save generation %s with BM_ERR_BITMAP_STATE, writing nothing', async (generation) => {
    const dir = await scratch();
    const path = join(dir, 'bad-generation.bmap');
    await expect(saveBitmap(path, sampleBitmap(), { generation })).rejects.toMatchObject({ code: ErrorCode.BITMAP_STATE });
    expect(await readdir(dir)).toEqual([]);
  });
});

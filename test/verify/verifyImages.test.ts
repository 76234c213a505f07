import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileDevice } from '../../src/io/FileDevice.js';
import { NbdServer } from '../../src/io/nbd/NbdServer.js';
import { copyImage, ErrorCode, verifyImages, type VerifyResult } from '../../src/index.js';
import { makeSampleImage } from '../../src/util/imageTools.js';
import { writeRandomFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';
import { imagePair } from './imagePair.js';

const KiB = 1024;
const MiB = 1 << 20;
const G = 64 * KiB; // the default granularity
const scratch = useScratchDir();

/** A source and a copy of it, with the copy's bytes flipped at `offsets`. */
async function pair(size: number, offsets: readonly number[] = []): Promise<{ dir: string; source: string; target: string }> {
  return imagePair(await scratch(), size, offsets);
}

/** The set bits of a result's bitmap, as byte extents. */
function bitmapExtents(r: VerifyResult): Array<[number, number]> {
  return [...r.bitmap.extents()];
}

// Size not a multiple of the granularity: the last granule is 1000 bytes.
const SIZE = 5 * MiB + 1000;
const LAST = 5 * MiB;
// Granules 0 and 1 (adjacent), 15 and 16 (adjacent, across the 1 MiB chunk boundary), 48, and the last partial one.
const CHANGED = [10, G + 7, MiB - 1, MiB, 3 * MiB + 5, SIZE - 1];
const EXPECTED = [
  { offset: 0, length: 2 * G },
  { offset: MiB - G, length: 2 * G },
  { offset: 3 * MiB, length: G },
  { offset: LAST, length: 1000 },
];

let server: { server: NbdServer; device: FileDevice } | undefined;
afterEach(async () => {
  await server?.server.close();
  await server?.device.close();
  server = undefined;
});

/** Serves `image` read-only on a Unix socket in `dir`; returns its URI. */
async function serve(dir: string, image: string): Promise<string> {
  const device = await FileDevice.open({ kind: 'file', path: image });
  const nbd = new NbdServer({ exports: [{ name: 'disk', device, readOnly: true }] });
  server = { server: nbd, device };
  const uri = `nbd+unix:///disk?socket=${join(dir, 'nbd.sock')}`;
  await nbd.listen(uri);
  return uri;
}

describe('verifyImages', () => {
  it('finds no extents in identical images of random data with holes', async () => {
    const { source, target } = await pair(SIZE);
    const r = await verifyImages({ source, target });
    expect(r).toMatchObject({ bytes: SIZE, differingBytes: 0, extents: [] });
    expect(r.bitmap.count()).toBe(0);
  });

  it('reports exactly the changed granules, coalesced, the last partial one clipped, with exactly their bits set', async () => {
    const { source, target } = await pair(SIZE, CHANGED);
    const r = await verifyImages({ source, target, workers: 2 });
    expect(r.extents).toEqual(EXPECTED);
    expect(r.differingBytes).toBe(5 * G + 1000);
    expect(r.bitmap.granularity).toBe(G);
    expect(r.bitmap.size).toBe(SIZE);
    expect(r.bitmap.count()).toBe(6);
    expect(bitmapExtents(r)).toEqual(EXPECTED.map((e) => [e.offset, e.length]));
  });

  it('reports the same extents on the coordinator thread (workers 0) and with small chunks', async () => {
    const { source, target } = await pair(SIZE, CHANGED);
    expect((await verifyImages({ source, target, workers: 0 })).extents).toEqual(EXPECTED);
    expect((await verifyImages({ source, target, chunkSize: 4 * KiB })).extents).toEqual(EXPECTED);
  });

  it('reports a whole granule when the granule is larger than a chunk', async () => {
    const { source, target } = await pair(SIZE, [3 * MiB + 5]);
    const r = await verifyImages({ source, target, chunkSize: 64 * KiB, granularity: MiB });
    expect(r.extents).toEqual([{ offset: 3 * MiB, length: MiB }]);
    expect(r.bitmap.count()).toBe(1);
  });

  it('compares only the source size of a larger target', async () => {
    const { source, target } = await pair(SIZE);
    const fh = await open(target, 'a');
    await fh.write(Buffer.from('trailing bytes past the source'));
    await fh.close();
    expect((await verifyImages({ source, target })).extents).toEqual([]);
  });

  it('rejects a target smaller than the source with BM_ERR_SIZE_MISMATCH', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    await writeRandomFile(join(dir, 'dst.img'), MiB);
    await expect(verifyImages({ source: join(dir, 'src.img'), target: join(dir, 'dst.img') })).rejects.toMatchObject({
      code: ErrorCode.SIZE_MISMATCH,
    });
  });

  it('gives the same result with an NBD target or source as with files', async () => {
    const { dir, source, target } = await pair(SIZE, CHANGED);
    const uri = await serve(dir, target);
    const viaTarget = await verifyImages({ source, target: uri });
    expect(viaTarget.extents).toEqual(EXPECTED);
    expect(bitmapExtents(viaTarget)).toEqual(EXPECTED.map((e) => [e.offset, e.length]));
    const viaSource = await verifyImages({ source: uri, target: source });
    expect(viaSource.extents).toEqual(EXPECTED);
  });

  it('finds a copy made by copyImage identical', async () => {
    const dir = await scratch();
    const source = join(dir, 'src.img');
    await makeSampleImage(source, { size: 9 * MiB + 4321, holeFraction: 0.5 });
    await copyImage(source, join(dir, 'copy.img'), { chunkSize: 256 * KiB });
    const r = await verifyImages({ source, target: join(dir, 'copy.img') });
    expect(r).toMatchObject({ bytes: 9 * MiB + 4321, differingBytes: 0, extents: [] });
  });

  it('rejects with BM_ERR_ABORTED when aborted while it opens the images', async () => {
    const { source, target } = await pair(SIZE);
    const controller = new AbortController();
    const verify = verifyImages({ source, target, signal: controller.signal });
    controller.abort();
    await expect(verify).rejects.toMatchObject({ code: ErrorCode.ABORTED, progress: { bytesDone: 0, bytesTotal: SIZE } });
  });

  it('verifies two empty images as identical', async () => {
    const dir = await scratch();
    await writeFile(join(dir, 'a.img'), '');
    await writeFile(join(dir, 'b.img'), '');
    expect(await verifyImages({ source: join(dir, 'a.img'), target: join(dir, 'b.img') })).toMatchObject({ bytes: 0, extents: [] });
  });
});

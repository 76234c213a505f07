import { copyFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { makeSampleImage } from '../../src/util/imageTools.js';

/** Flips the byte at each offset of `path`. */
export async function flipBytes(path: string, offsets: readonly number[]): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    for (const at of offsets) {
      await fh.read(b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, at);
    }
  } finally {
    await fh.close();
  }
}

/** In `dir`: a source (random data with holes) and a copy of it with its bytes flipped at `offsets`. */
export async function imagePair(dir: string, size: number, offsets: readonly number[] = []): Promise<{ dir: string; source: string; target: string }> {
  const source = join(dir, 'src.img');
  const target = join(dir, 'dst.img');
  await makeSampleImage(source, { size, holeFraction: 0.4, extentSize: 256 * 1024 });
  await copyFile(source, target);
  await flipBytes(target, offsets);
  return { dir, source, target };
}

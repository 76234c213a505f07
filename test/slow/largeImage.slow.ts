import { open } from 'node:fs/promises';
import { randomFillSync } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { copyImage } from '../../src/index.js';
import { hashFile } from '../../src/util/imageTools.js';
import { useScratchDir } from '../helpers/scratch.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const scratch = useScratchDir();

/** A sparse 3 GiB image with random data across the 2 GiB mark and at the end. */
async function makeLargeImage(path: string): Promise<void> {
  const fh = await open(path, 'w');
  const buf = Buffer.alloc(8 * MiB);
  try {
    await fh.truncate(3 * GiB + 12345);
    for (const at of [0, 2 * GiB - 4 * MiB, 3 * GiB - 8 * MiB]) {
      randomFillSync(buf);
      await fh.write(buf, 0, buf.length, at);
    }
  } finally {
    await fh.close();
  }
}

describe('images over 2 GiB', () => {
  it.each([false, true])('copies a 3 GiB image byte for byte (direct: %s)', async (direct) => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await makeLargeImage(src);
    const result = await copyImage(src, join(dir, 'dst.img'), { direct });
    expect(result.bytes).toBe(3 * GiB + 12345);
    expect(await hashFile(join(dir, 'dst.img'))).toBe(await hashFile(src));
  }, 600_000);
});

import { createHash, randomFillSync } from 'node:crypto';
import { open, stat } from 'node:fs/promises';

/** Reads in pieces of this size when hashing. */
const HASH_PIECE = 4 << 20;

/** SHA-256 of the first `length` bytes of a file (all of it by default), hex. */
export async function hashFile(path: string, length?: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const size = length ?? (await fh.stat()).size;
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(HASH_PIECE);
    for (let at = 0; at < size; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(HASH_PIECE, size - at), at);
      if (bytesRead === 0) throw new Error(`${path} is shorter than ${size} bytes`);
      hash.update(buf.subarray(0, bytesRead));
      at += bytesRead;
    }
    return hash.digest('hex');
  } finally {
    await fh.close();
  }
}

/** Bytes a file has allocated on disk (less than its size when it has holes). */
export async function allocatedBytes(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** What a sample image looks like. */
export interface SampleImageOptions {
  /** Size in bytes. */
  readonly size: number;
  /** Fraction of the image left as holes (0 to 1). */
  readonly holeFraction?: number;
  /** Runs of data and holes are whole multiples of this. */
  readonly extentSize?: number;
}

/**
 * Writes a sample image: random data with holes (never written, so sparse), in runs of
 * `extentSize` bytes. Which runs are holes is spread evenly, so any prefix has about the asked mix.
 */
export async function makeSampleImage(path: string, options: SampleImageOptions): Promise<void> {
  const { size, holeFraction = 0.5, extentSize = 1 << 20 } = options;
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    const buf = Buffer.allocUnsafe(extentSize);
    let holes = 0;
    for (let at = 0, i = 0; at < size; at += extentSize, i++) {
      // Bresenham-style spread: run i is a hole when that keeps the hole share at or under the target.
      if (holes + 1 <= (i + 1) * holeFraction) {
        holes++;
        continue;
      }
      const len = Math.min(extentSize, size - at);
      randomFillSync(buf, 0, len);
      await fh.write(buf, 0, len, at);
    }
  } finally {
    await fh.close();
  }
}

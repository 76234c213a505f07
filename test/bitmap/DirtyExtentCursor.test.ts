import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { DirtyExtentCursor } from '../../src/bitmap/DirtyExtentCursor.js';
import type { ExtentSource } from '../../src/sched/ExtentSource.js';

const G = 65536;
const ODD_SIZE = 10 * G + 100;

function bitmapWith(bitCount: number, runs: Array<[first: number, count: number]>, size = bitCount * G): DirtyBitmap {
  const bm = DirtyBitmap.create(size, G);
  for (const [first, count] of runs) bm.markBits(first, count);
  return bm;
}

/** One take, as [offset, length] pairs. */
function takeOnce(cursor: DirtyExtentCursor, maxExtents: number, maxBytes: number): Array<[number, number]> {
  const out: number[] = [];
  const n = cursor.take(out, maxExtents, maxBytes);
  expect(out.length).toBe(2 * n);
  const pairs: Array<[number, number]> = [];
  for (let i = 0; i < out.length; i += 2) pairs.push([out[i]!, out[i + 1]!]);
  return pairs;
}

describe('DirtyExtentCursor', () => {
  it('takes nothing from a clean bitmap', () => {
    const cursor = new DirtyExtentCursor(bitmapWith(100, []));
    expect(takeOnce(cursor, 16, 1 << 20)).toEqual([]);
  });

  it('is an ExtentSource that is never exhausted', () => {
    const source: ExtentSource = new DirtyExtentCursor(bitmapWith(100, []));
    expect(source.exhausted).toBe(false);
  });

  it('clears the bits of what it takes before returning it', () => {
    const bm = bitmapWith(100, [[3, 2], [50, 1]]);
    const cursor = new DirtyExtentCursor(bm);
    expect(takeOnce(cursor, 1, 1 << 20)).toEqual([[3 * G, 2 * G]]);
    expect(bm.count()).toBe(1);
    expect(bm.isDirty(3 * G, 2 * G)).toBe(false);
  });

  it('appends offset,length pairs after what out already holds', () => {
    const cursor = new DirtyExtentCursor(bitmapWith(100, [[3, 1]]));
    const out = [7, 7];
    expect(cursor.take(out, 4, 1 << 20)).toBe(1);
    expect(out).toEqual([7, 7, 3 * G, G]);
  });

  it('clips the last extent to the image size', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.markBits(8, 3);
    expect(takeOnce(new DirtyExtentCursor(bm), 4, 1 << 20)).toEqual([[8 * G, 2 * G + 100]]);
  });

  it('splits runs at maxBytes', () => {
    const cursor = new DirtyExtentCursor(bitmapWith(100, [[0, 5]]));
    expect(takeOnce(cursor, 8, 2 * G)).toEqual([
      [0, 2 * G],
      [2 * G, 2 * G],
      [4 * G, G],
    ]);
  });

  it('takes one granule per extent when maxBytes is below the granularity', () => {
    const cursor = new DirtyExtentCursor(bitmapWith(100, [[10, 2]]));
    expect(takeOnce(cursor, 8, 4096)).toEqual([
      [10 * G, G],
      [11 * G, G],
    ]);
  });

  it('rounds a maxBytes that is not a multiple of the granularity down to whole granules', () => {
    const cursor = new DirtyExtentCursor(bitmapWith(100, [[0, 3]]));
    expect(takeOnce(cursor, 8, 2 * G - 1)).toEqual([
      [0, G],
      [G, G],
      [2 * G, G],
    ]);
  });

  it('stops at maxExtents and goes on from there at the next take', () => {
    const cursor = new DirtyExtentCursor(bitmapWith(100, [[1, 1], [5, 1], [9, 1]]));
    expect(takeOnce(cursor, 2, 1 << 20)).toEqual([
      [G, G],
      [5 * G, G],
    ]);
    expect(takeOnce(cursor, 2, 1 << 20)).toEqual([[9 * G, G]]);
  });

  it('goes on from its position to the end, then wraps round to the bits before it', () => {
    const bm = bitmapWith(100, [[20, 1], [80, 1]]);
    const cursor = new DirtyExtentCursor(bm);
    takeOnce(cursor, 1, G); // takes bit 20: the cursor now stands at 21
    bm.markBits(10, 1);
    bm.markBits(90, 1);
    expect(takeOnce(cursor, 8, G)).toEqual([
      [80 * G, G],
      [90 * G, G],
      [10 * G, G],
    ]);
  });

  it('takes a bit marked again behind the cursor once it has wrapped round', () => {
    const bm = bitmapWith(100, [[5, 1]]);
    const cursor = new DirtyExtentCursor(bm);
    expect(takeOnce(cursor, 8, G)).toEqual([[5 * G, G]]);
    bm.markBits(5, 1);
    expect(takeOnce(cursor, 8, G)).toEqual([[5 * G, G]]);
  });

  it('takes a run that crosses its starting position in two parts', () => {
    const bm = bitmapWith(100, [[20, 1]]);
    const cursor = new DirtyExtentCursor(bm);
    takeOnce(cursor, 1, G);
    expect(cursor.position).toBe(21);
    bm.markBits(18, 6);
    expect(takeOnce(cursor, 8, 1 << 20)).toEqual([
      [21 * G, 3 * G],
      [18 * G, 3 * G],
    ]);
  });

  it('drains a 1 TiB bitmap with scattered bits completely, each extent once', () => {
    const bm = DirtyBitmap.create(2 ** 40, G);
    const bits = [0, 31, 32, 1023, 1024, 40_000, 1_000_000, bm.bitCount - 1];
    for (const b of bits) bm.markBits(b, 1);
    const cursor = new DirtyExtentCursor(bm);
    const taken: number[] = [];
    let pairs: Array<[number, number]>;
    while ((pairs = takeOnce(cursor, 3, 16 * G)).length > 0) taken.push(...pairs.map(([offset]) => offset / G));
    expect(taken).toEqual([0, 31, 1023, 40_000, 1_000_000, bm.bitCount - 1]);
    expect(bm.count()).toBe(0);
  });
});

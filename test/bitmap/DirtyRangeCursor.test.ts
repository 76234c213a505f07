import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/index.js';
import { DirtyRangeCursor } from '../../src/bitmap/DirtyRangeCursor.js';

const G = 4096;

function takeAll(cursor: DirtyRangeCursor, maxBytes = 64 * G): number[] {
  const out: number[] = [];
  while (cursor.take(out, 4, maxBytes) > 0);
  return out;
}

describe('DirtyRangeCursor', () => {
  it('claims the dirty extents inside its ranges, in the order of the ranges, and leaves the bits outside them set', () => {
    const bitmap = DirtyBitmap.create(64 * G, G);
    bitmap.markAll();
    const cursor = new DirtyRangeCursor(bitmap, [
      [40 * G, 44 * G],
      [8 * G, 10 * G],
    ]);
    expect(takeAll(cursor)).toEqual([40 * G, 4 * G, 8 * G, 2 * G]);
    expect(bitmap.count()).toBe(64 - 6);
    expect(bitmap.isDirty(40 * G, 4 * G) || bitmap.isDirty(8 * G, 2 * G)).toBe(false);
  });

  it('skips clean bits inside a range', () => {
    const bitmap = DirtyBitmap.create(64 * G, G);
    bitmap.mark(2 * G, G);
    bitmap.mark(5 * G, 2 * G);
    expect(takeAll(new DirtyRangeCursor(bitmap, [[0, 16 * G]]))).toEqual([2 * G, G, 5 * G, 2 * G]);
  });

  it('never goes round: a bit set behind it stays set, and it is exhausted after one walk', () => {
    const bitmap = DirtyBitmap.create(64 * G, G);
    bitmap.markAll();
    const cursor = new DirtyRangeCursor(bitmap, [[0, 64 * G]]);
    const out: number[] = [];
    cursor.take(out, 1, 8 * G);
    bitmap.mark(0, G); // written behind the cursor
    takeAll(cursor);
    expect(cursor.exhausted).toBe(true);
    expect(cursor.take([], 4, 8 * G)).toBe(0);
    expect(bitmap.isDirty(0, G)).toBe(true);
    expect(bitmap.count()).toBe(1);
  });

  it('hands out extents of at most maxBytes', () => {
    const bitmap = DirtyBitmap.create(64 * G, G);
    bitmap.markAll();
    const out = takeAll(new DirtyRangeCursor(bitmap, [[0, 20 * G]]), 8 * G);
    expect(out).toEqual([0, 8 * G, 8 * G, 8 * G, 16 * G, 4 * G]);
  });

  it('says what it has not walked yet, in bytes and as ranges', () => {
    const bitmap = DirtyBitmap.create(64 * G, G);
    bitmap.markAll();
    const cursor = new DirtyRangeCursor(bitmap, [
      [0, 16 * G],
      [32 * G, 40 * G],
    ]);
    expect(cursor.remaining).toBe(24 * G);
    cursor.take([], 1, 4 * G);
    expect(cursor.remaining).toBe(20 * G);
    expect(cursor.rest()).toEqual([
      [4 * G, 16 * G],
      [32 * G, 40 * G],
    ]);
  });

  it('gives a granule to the range its first byte is in, so ranges meeting inside it never both claim it, and clips the last to the image size', () => {
    const size = 10 * G + 100;
    const bitmap = DirtyBitmap.create(size, G);
    bitmap.markAll();
    const first = takeAll(new DirtyRangeCursor(bitmap, [[0, 3 * G + G / 2]]));
    const second = takeAll(new DirtyRangeCursor(bitmap, [[3 * G + G / 2, size]]));
    expect(first).toEqual([0, 4 * G]);
    expect(second).toEqual([4 * G, size - 4 * G]);
    expect(bitmap.count()).toBe(0);
  });

  it('claims nothing for a range inside one granule that another range starts', () => {
    const bitmap = DirtyBitmap.create(64 * G, G);
    bitmap.markAll();
    expect(takeAll(new DirtyRangeCursor(bitmap, [[G + 100, G + 200]]))).toEqual([]);
    expect(bitmap.count()).toBe(64);
  });
});

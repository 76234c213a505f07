import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/index.js';
import { GuardedDirtyExtents } from '../../src/job/GuardedDirtyExtents.js';
import { RangeLocks } from '../../src/job/RangeLocks.js';

const G = 4096;

function setup(): { bitmap: DirtyBitmap; locks: RangeLocks; extents: GuardedDirtyExtents } {
  const bitmap = DirtyBitmap.create(64 * G, G);
  const locks = new RangeLocks();
  return { bitmap, locks, extents: new GuardedDirtyExtents(bitmap, locks) };
}

function take(extents: GuardedDirtyExtents, max = 16): number[] {
  const out: number[] = [];
  extents.take(out, max, 4 * G);
  return out;
}

describe('GuardedDirtyExtents', () => {
  it('clears the bits of the extents it hands out (invariant 2: before the copy reads)', () => {
    const { bitmap, extents } = setup();
    bitmap.mark(3 * G, 2 * G);
    expect(take(extents)).toEqual([3 * G, 2 * G]);
    expect(bitmap.count()).toBe(0);
  });

  it('does not hand out an extent again while its first copy is in flight, so copies cannot land out of order', () => {
    const { bitmap, extents } = setup();
    bitmap.mark(3 * G, G);
    const first = take(extents);
    bitmap.mark(3 * G, G); // a write lands during the copy
    expect(take(extents)).toEqual([]);
    expect(bitmap.isDirty(3 * G, G)).toBe(true); // put back, not lost
    extents.release(first);
    expect(take(extents)).toEqual([3 * G, G]);
  });

  it('does not hand out an extent a write-blocking write holds, and leaves it dirty', async () => {
    const { bitmap, locks, extents } = setup();
    const release = await locks.acquireWrite(5 * G, 5 * G + 100);
    bitmap.mark(5 * G, G);
    expect(take(extents)).toEqual([]);
    expect(bitmap.isDirty(5 * G, G)).toBe(true);
    release();
    expect(take(extents)).toEqual([5 * G, G]);
  });

  it('makes a write-blocking write wait until the overlapping copy in flight is released', async () => {
    const { bitmap, locks, extents } = setup();
    bitmap.mark(0, G);
    const batch = take(extents);
    let acquired = false;
    const waiting = locks.acquireWrite(100, 200).then((release) => {
      acquired = true;
      release();
    });
    await new Promise((r) => setImmediate(r));
    expect(acquired).toBe(false);
    extents.release(batch);
    await waiting;
    expect(acquired).toBe(true);
  });

  it('hands out extents that do not overlap held ones', () => {
    const { bitmap, extents } = setup();
    bitmap.mark(0, G);
    const first = take(extents);
    bitmap.mark(0, G);
    bitmap.mark(10 * G, G);
    expect(take(extents)).toEqual([10 * G, G]);
    extents.release(first);
  });
});

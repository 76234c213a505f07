import { describe, expect, it } from 'vitest';
import {
  DEFAULT_GRANULARITY,
  DirtyBitmap,
  MAX_BIT_COUNT,
  MAX_GRANULARITY,
  MIN_GRANULARITY,
  PRIVATE_COUNT_SLOTS,
} from '../../src/bitmap/DirtyBitmap.js';
import { COUNT_SLOT_INDEXES, SLOT_CLAIM_INDEX } from '../../src/bitmap/BitmapLayout.js';
import { BitmapError, ErrorCode, InvalidArgumentError } from '../../src/errors.js';

const G = 65536;
const KiB = 1024;
const TiB = 2 ** 40;
/** Eleven bits, the last covering only 100 bytes. */
const ODD_SIZE = 10 * G + 100;

function setBits(bm: DirtyBitmap): number[] {
  const bits: number[] = [];
  for (let b = bm.nextDirty(0); b >= 0; b = bm.nextDirty(b + 1)) bits.push(b);
  return bits;
}

function bitsOf(bitset: Uint32Array): number[] {
  const bits: number[] = [];
  for (let i = 0; i < bitset.length * 32; i++) if ((bitset[i >>> 5]! >>> (i & 31)) & 1) bits.push(i);
  return bits;
}

function withBits(bitCount: number, bits: number[], granularity = G): DirtyBitmap {
  const bm = DirtyBitmap.create(bitCount * granularity, granularity);
  for (const b of bits) bm.markBits(b, 1);
  return bm;
}

function expectCode(fn: () => unknown, code: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toMatchObject({ code });
}

describe('DirtyBitmap geometry', () => {
  it('has one bit per granule, rounding a partial last granule up', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    expect(bm.bitCount).toBe(11);
    expect(bm.size).toBe(ODD_SIZE);
    expect(bm.granularity).toBe(G);
  });

  it('defaults to a 64 KiB granularity', () => {
    expect(DirtyBitmap.create(TiB).granularity).toBe(DEFAULT_GRANULARITY);
    expect(DEFAULT_GRANULARITY).toBe(64 * KiB);
  });

  it('rejects a granularity that is not a power of two', () => {
    expectCode(() => DirtyBitmap.create(G, 3 * 1024), ErrorCode.INVALID_OPTION);
  });

  it('rejects a granularity below the minimum or above the maximum', () => {
    expect(() => DirtyBitmap.create(G, MIN_GRANULARITY / 2)).toThrow(InvalidArgumentError);
    expect(() => DirtyBitmap.create(G, MAX_GRANULARITY * 2)).toThrow(InvalidArgumentError);
    expect(DirtyBitmap.create(G, MIN_GRANULARITY).bitCount).toBe(128);
    expect(DirtyBitmap.create(G, MAX_GRANULARITY).bitCount).toBe(1);
  });

  it('rejects a negative or fractional image size', () => {
    expectCode(() => DirtyBitmap.create(-1), ErrorCode.INVALID_OPTION);
    expectCode(() => DirtyBitmap.create(1.5), ErrorCode.INVALID_OPTION);
  });

  it('rejects an image that needs more than MAX_BIT_COUNT bits', () => {
    expectCode(() => DirtyBitmap.create((MAX_BIT_COUNT + 1) * 512, 512), ErrorCode.INVALID_OPTION);
  });

  it('handles a zero-byte image with no bits', () => {
    const bm = DirtyBitmap.create(0);
    bm.markAll();
    bm.mark(0, 0);
    expect(bm.bitCount).toBe(0);
    expect(bm.count()).toBe(0);
    expect(bm.nextDirty(0)).toBe(-1);
    expect(bm.nextClean(0)).toBe(0);
    expect([...bm.extents({ wrap: true })]).toEqual([]);
  });

  it('uses at most 1.1 times the raw bits of memory from 64 Ki bits up', () => {
    for (const [size, granularity] of [[TiB, G], [65536 * 512, 512], [(131072 + 1) * 512, 512], [3 * 2 ** 30 + 1, 4096]] as const) {
      const bm = DirtyBitmap.create(size, granularity);
      expect(bm.memoryBytes, `${bm.bitCount} bits`).toBeLessThanOrEqual(1.1 * Math.ceil(bm.bitCount / 8));
    }
  });
});

describe('DirtyBitmap.mark', () => {
  it('marks the first bit for a write at offset 0', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.mark(0, 1);
    expect(setBits(bm)).toEqual([0]);
  });

  it('marks the last, partial bit for a write ending at the image end', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.mark(ODD_SIZE - 1, 1);
    expect(setBits(bm)).toEqual([10]);
  });

  it('marks every bit a range touches, partial granules at both ends included', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.mark(G - 1, G + 2);
    expect(setBits(bm)).toEqual([0, 1, 2]);
  });

  it('marks a range spanning several words', () => {
    const bm = DirtyBitmap.create(200 * G, G);
    bm.mark(30 * G, 41 * G);
    expect(setBits(bm)).toEqual(Array.from({ length: 41 }, (_, i) => 30 + i));
    expect(bm.count()).toBe(41);
  });

  it('ignores a zero-length write', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.mark(5 * G, 0);
    bm.mark(ODD_SIZE, 0);
    expect(bm.count()).toBe(0);
  });

  it('throws on a range past the image end and marks nothing', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    expectCode(() => bm.mark(ODD_SIZE - 10, 11), ErrorCode.INVALID_OPTION);
    expectCode(() => bm.mark(ODD_SIZE, 1), ErrorCode.INVALID_OPTION);
    expect(bm.count()).toBe(0);
  });

  it('throws on a negative offset or length', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    expectCode(() => bm.mark(-1, 2), ErrorCode.INVALID_OPTION);
    expectCode(() => bm.mark(0, -1), ErrorCode.INVALID_OPTION);
    expectCode(() => bm.mark(Number.NaN, 1), ErrorCode.INVALID_OPTION);
  });

  it('counts a bit marked twice once', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.mark(4096, 4096);
    bm.mark(8192, 4096);
    expect(bm.count()).toBe(1);
  });

  it('marks bits by number with markBits', () => {
    const bm = DirtyBitmap.create(100 * G, G);
    bm.markBits(31, 3);
    expect(setBits(bm)).toEqual([31, 32, 33]);
  });

  it('rejects a markBits range past bitCount', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    expectCode(() => bm.markBits(10, 2), ErrorCode.INVALID_OPTION);
    expectCode(() => bm.markBits(1.5, 1), ErrorCode.INVALID_OPTION);
  });

  it('markAll sets every bit and dirtyBytes equals the image size', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.markAll();
    expect(bm.count()).toBe(11);
    expect(bm.dirtyBytes()).toBe(ODD_SIZE);
    expect(bm.nextClean(0)).toBe(11);
  });
});

describe('DirtyBitmap.testAndClear', () => {
  it('returns which bits were set and clears them', () => {
    const bm = withBits(64, [3, 5, 6]);
    expect(bitsOf(bm.testAndClear(0, 10))).toEqual([3, 5, 6]);
    expect(bm.count()).toBe(0);
    expect(bitsOf(bm.testAndClear(0, 10))).toEqual([]);
  });

  it('numbers the result from firstBit when the range starts and ends inside words', () => {
    const bm = withBits(200, [36, 37, 63, 64, 100, 106, 107]);
    const claimed = bm.testAndClear(37, 70);
    expect(claimed.length).toBe(3);
    expect(bitsOf(claimed)).toEqual([0, 26, 27, 63, 69]);
  });

  it('leaves bits outside the range set and keeps count exact', () => {
    const bm = withBits(200, [36, 37, 63, 64, 100, 106, 107]);
    bm.testAndClear(37, 70);
    expect(setBits(bm)).toEqual([36, 107]);
    expect(bm.count()).toBe(2);
  });

  it('clears the first and the last bit', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.markAll();
    expect(bitsOf(bm.testAndClear(0, 1))).toEqual([0]);
    expect(bitsOf(bm.testAndClear(10, 1))).toEqual([0]);
    expect(setBits(bm)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('fills a bitset it is given, zeroing the words it uses first', () => {
    const bm = withBits(200, [40, 41]);
    const into = Uint32Array.of(0xffffffff, 0xffffffff, 7);
    expect(bm.testAndClear(40, 40, into)).toBe(into);
    expect(Array.from(into)).toEqual([3, 0, 7]);
  });

  it('rejects a bitset too small for the range', () => {
    const bm = withBits(200, [40]);
    expectCode(() => bm.testAndClear(0, 33, new Uint32Array(1)), ErrorCode.INVALID_OPTION);
    expect(bm.count()).toBe(1);
  });

  it('returns an empty bitset for count 0', () => {
    const bm = withBits(64, [0]);
    expect(bm.testAndClear(0, 0)).toEqual(new Uint32Array(0));
    expect(bm.count()).toBe(1);
  });

  it('rejects a range past bitCount', () => {
    const bm = withBits(64, [0]);
    expectCode(() => bm.testAndClear(60, 5), ErrorCode.INVALID_OPTION);
  });

  it('clear clears every bit', () => {
    const bm = DirtyBitmap.create(TiB, G);
    bm.markBits(0, 5000);
    bm.markBits(bm.bitCount - 1, 1);
    bm.clear();
    expect(bm.count()).toBe(0);
    expect(bm.nextDirty(0)).toBe(-1);
  });
});

describe('DirtyBitmap queries', () => {
  it('isDirty tells whether any bit a byte range touches is set', () => {
    const bm = withBits(11, [4]);
    expect(bm.isDirty(4 * G, 1)).toBe(true);
    expect(bm.isDirty(3 * G, G + 1)).toBe(true);
    expect(bm.isDirty(3 * G, G)).toBe(false);
    expect(bm.isDirty(5 * G, 6 * G)).toBe(false);
    expect(bm.isDirty(4 * G, 0)).toBe(false);
  });

  it('allDirty tells whether every bit a byte range touches is set', () => {
    const bm = withBits(70, [3, 4, 5, 31, 32, 33]);
    expect(bm.allDirty(3 * G, 3 * G)).toBe(true);
    expect(bm.allDirty(3 * G + 100, 2 * G)).toBe(true);
    expect(bm.allDirty(2 * G, 2 * G)).toBe(false);
    expect(bm.allDirty(5 * G, G + 1)).toBe(false);
    expect(bm.allDirty(31 * G, 3 * G)).toBe(true);
    expect(bm.allDirty(31 * G, 4 * G)).toBe(false);
    expect(bm.allDirty(4 * G, 0)).toBe(false);
  });

  it('dirtyBytes clips the partial last bit', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.markBits(9, 2);
    expect(bm.dirtyBytes()).toBe(G + 100);
  });

  it('nextDirty finds the first and the last bit', () => {
    const bm = withBits(100, [0, 99]);
    expect(bm.nextDirty(0)).toBe(0);
    expect(bm.nextDirty(1)).toBe(99);
    expect(bm.nextDirty(99)).toBe(99);
  });

  it('nextDirty returns -1 past the last dirty bit, without wrapping', () => {
    const bm = withBits(100, [5]);
    expect(bm.nextDirty(6)).toBe(-1);
    expect(bm.nextDirty(100)).toBe(-1);
  });

  it('nextDirty finds bits far apart across summary words on a 1 TiB bitmap', () => {
    const bm = DirtyBitmap.create(TiB, G);
    const last = bm.bitCount - 1;
    bm.markBits(5, 1);
    bm.markBits(1_048_575, 1);
    bm.markBits(last, 1);
    expect(bm.nextDirty(0)).toBe(5);
    expect(bm.nextDirty(6)).toBe(1_048_575);
    expect(bm.nextDirty(1_048_576)).toBe(last);
  });

  it('nextDirty skips words that were cleared after their summary bits were set', () => {
    const bm = DirtyBitmap.create(TiB, G);
    for (let b = 0; b < 100_000; b += 1000) bm.markBits(b, 1);
    bm.testAndClear(0, 99_000);
    expect(bm.nextDirty(0)).toBe(99_000);
    bm.markBits(33_000, 1);
    expect(bm.nextDirty(0)).toBe(33_000);
  });

  it('nextClean returns the first clear bit, or bitCount when all after are set', () => {
    const bm = withBits(100, [10, 11, 12]);
    expect(bm.nextClean(0)).toBe(0);
    expect(bm.nextClean(10)).toBe(13);
    bm.markBits(13, 87);
    expect(bm.nextClean(10)).toBe(100);
  });

  it('nextClean stops at its limit', () => {
    const bm = withBits(100, []);
    bm.markBits(0, 100);
    expect(bm.nextClean(3, 40)).toBe(40);
  });
});

describe('DirtyBitmap.extents', () => {
  it('coalesces adjacent bits across a word boundary into one extent', () => {
    const bm = withBits(100, [30, 31, 32, 33]);
    expect([...bm.extents()]).toEqual([[30 * G, 4 * G]]);
  });

  it('coalesces adjacent bits across a summary word boundary', () => {
    // A level-1 word covers 32 words (1024 bits); a level-2 word 32768 bits.
    const bm = withBits(70_000, [1023, 1024, 32_767, 32_768]);
    expect([...bm.extents()]).toEqual([
      [1023 * G, 2 * G],
      [32_767 * G, 2 * G],
    ]);
  });

  it('clips the last extent to the image size', () => {
    const bm = DirtyBitmap.create(ODD_SIZE, G);
    bm.markBits(9, 2);
    expect([...bm.extents()]).toEqual([[9 * G, G + 100]]);
  });

  it('splits runs at maxBytes', () => {
    const bm = withBits(100, []);
    bm.markBits(0, 10);
    expect([...bm.extents({ maxBytes: 4 * G })]).toEqual([
      [0, 4 * G],
      [4 * G, 4 * G],
      [8 * G, 2 * G],
    ]);
  });

  it('gives one granule per extent when maxBytes is below the granularity', () => {
    const bm = withBits(100, [7, 8]);
    expect([...bm.extents({ maxBytes: 4096 })]).toEqual([
      [7 * G, G],
      [8 * G, G],
    ]);
  });

  it('rounds a maxBytes that is not a multiple of the granularity down', () => {
    const bm = withBits(100, []);
    bm.markBits(0, 5);
    expect([...bm.extents({ maxBytes: 2 * G + 5 })].map(([, len]) => len)).toEqual([2 * G, 2 * G, G]);
  });

  it('starts at fromBit', () => {
    const bm = withBits(100, [2, 50, 51]);
    expect([...bm.extents({ fromBit: 3 })]).toEqual([[50 * G, 2 * G]]);
  });

  it('with wrap continues from bit 0 up to fromBit', () => {
    const bm = withBits(100, [2, 50, 99]);
    expect([...bm.extents({ fromBit: 40, wrap: true })]).toEqual([
      [50 * G, G],
      [99 * G, G],
      [2 * G, G],
    ]);
  });

  it('with wrap yields a run that straddles fromBit as two extents, each bit once', () => {
    const bm = withBits(100, [38, 39, 40, 41]);
    expect([...bm.extents({ fromBit: 40, wrap: true })]).toEqual([
      [40 * G, 2 * G],
      [38 * G, 2 * G],
    ]);
  });

  it('clears nothing', () => {
    const bm = withBits(100, [1, 2]);
    [...bm.extents()];
    expect(bm.count()).toBe(2);
  });

  it('rejects a fromBit past bitCount and a maxBytes of 0', () => {
    const bm = withBits(100, [1]);
    expectCode(() => bm.extents({ fromBit: 101 }), ErrorCode.INVALID_OPTION);
    expectCode(() => bm.extents({ maxBytes: 0 }), ErrorCode.INVALID_OPTION);
  });
});

describe('DirtyBitmap.merge and snapshot', () => {
  it('merge ORs the other bitmap in and counts each bit once', () => {
    const a = withBits(100, [1, 2, 64]);
    const b = withBits(100, [2, 3, 99]);
    a.merge(b);
    expect(setBits(a)).toEqual([1, 2, 3, 64, 99]);
    expect(a.count()).toBe(5);
    expect(setBits(b)).toEqual([2, 3, 99]);
  });

  it('merge rejects a bitmap of another size', () => {
    expectCode(() => DirtyBitmap.create(10 * G).merge(DirtyBitmap.create(11 * G)), ErrorCode.BITMAP_GEOMETRY);
  });

  it('merge rejects a bitmap of another granularity', () => {
    const other = DirtyBitmap.create(10 * G, G / 2);
    expect(() => DirtyBitmap.create(10 * G, G).merge(other)).toThrow(BitmapError);
  });

  it('snapshot is a copy that later marks do not change', () => {
    const bm = withBits(100, [1, 70]);
    const snap = bm.snapshot();
    bm.markBits(5, 1);
    bm.testAndClear(70, 1);
    expect(setBits(snap)).toEqual([1, 70]);
    expect(snap.count()).toBe(2);
    expect(snap.frozen).toBe(true);
  });

  it('a snapshot cannot be marked or cleared', () => {
    const snap = withBits(100, [1]).snapshot();
    for (const change of [
      () => snap.mark(0, 1),
      () => snap.markBits(0, 1),
      () => snap.markAll(),
      () => snap.testAndClear(0, 2),
      () => snap.clear(),
      () => snap.merge(withBits(100, [2])),
      () => snap.freeze(),
    ]) {
      expectCode(change, ErrorCode.BITMAP_STATE);
    }
    expect(setBits(snap)).toEqual([1]);
  });
});

describe('DirtyBitmap.freeze (successor pattern)', () => {
  it('moves every bit into the frozen bitmap and leaves the live one clean', () => {
    const live = withBits(5000, [0, 1, 4096, 4999]);
    const { frozen } = live.freeze();
    expect(setBits(frozen)).toEqual([0, 1, 4096, 4999]);
    expect(frozen.count()).toBe(4);
    expect(frozen.frozen).toBe(true);
    expect(live.count()).toBe(0);
    expect(live.nextDirty(0)).toBe(-1);
  });

  it('the live bitmap, through any handle, records writes after the freeze', () => {
    const live = withBits(100, [1]);
    const writer = DirtyBitmap.fromShared(live.share());
    const succession = live.freeze();
    writer.markBits(2, 1);
    expect(succession.successor).toBe(live);
    expect(setBits(live)).toEqual([2]);
    expect(setBits(succession.frozen)).toEqual([1]);
  });

  it('commit drops the frozen bits', () => {
    const live = withBits(100, [1]);
    const succession = live.freeze();
    live.markBits(2, 1);
    succession.commit();
    expect(succession.state).toBe('committed');
    expect(setBits(live)).toEqual([2]);
  });

  it('abort merges the frozen bits back into the live bitmap', () => {
    const live = withBits(100, [1, 2]);
    const succession = live.freeze();
    live.markBits(2, 2);
    succession.abort();
    expect(succession.state).toBe('aborted');
    expect(setBits(live)).toEqual([1, 2, 3]);
    expect(live.count()).toBe(3);
  });

  it('settling a succession twice throws BM_ERR_BITMAP_STATE', () => {
    const succession = withBits(100, [1]).freeze();
    succession.commit();
    expectCode(() => succession.abort(), ErrorCode.BITMAP_STATE);
    expectCode(() => succession.commit(), ErrorCode.BITMAP_STATE);
  });

  it('cannot freeze again until the pending succession is settled', () => {
    const live = withBits(100, [1]);
    const first = live.freeze();
    expectCode(() => live.freeze(), ErrorCode.BITMAP_STATE);
    first.abort();
    expect(setBits(live.freeze().frozen)).toEqual([1]);
  });
});

describe('DirtyBitmap sharing', () => {
  it('a handle from fromShared sees and makes the same marks', () => {
    const a = DirtyBitmap.create(ODD_SIZE, G);
    const b = DirtyBitmap.fromShared(structuredClone(a.share()));
    a.markBits(1, 1);
    b.markBits(10, 1);
    expect(setBits(b)).toEqual([1, 10]);
    expect(a.count()).toBe(2);
    b.testAndClear(0, 11);
    expect(a.count()).toBe(0);
  });

  it('gives the handles a thread opens on one shared bitmap a single count slot', () => {
    const first = DirtyBitmap.create(1000 * G, G);
    const handles = [first, ...Array.from({ length: PRIVATE_COUNT_SLOTS + 1 }, () => DirtyBitmap.fromShared(first.share()))];
    handles.forEach((h, i) => h.markBits(i * 10, 5));
    expect(new Int32Array(first.share().buffer)[SLOT_CLAIM_INDEX]).toBe(1);
    expect(first.count()).toBe(5 * handles.length);
  });

  it('counts exactly with more handles than private count slots', () => {
    const first = DirtyBitmap.create(1000 * G, G);
    // Each structured clone is a SharedArrayBuffer object of its own, so each handle claims a slot.
    const handles = [first, ...Array.from({ length: 2 * PRIVATE_COUNT_SLOTS }, () => DirtyBitmap.fromShared(structuredClone(first.share())))];
    handles.forEach((h, i) => h.markBits(i * 10, 5));
    expect(first.count()).toBe(5 * handles.length);
    // The first handle clears part of what each other one marked: its slot goes negative.
    handles.forEach((_, i) => i > 0 && first.testAndClear(i * 10, 2));
    expect(handles.map((h) => h.count())).toEqual(handles.map(() => 5 * handles.length - 2 * (handles.length - 1)));
  });

  it('keeps the count exact when a count slot wraps past 2^31', () => {
    // A long mirror: the writer's slot only grows and the copier's only shrinks. Start the slots
    // where a long history would have left them (summing to the 0 bits set), then cross 2^31.
    const bm = DirtyBitmap.create(1000 * G, G);
    const slots = new Int32Array(bm.share().buffer);
    const [shared, firstPrivate] = COUNT_SLOT_INDEXES as [number, number];
    slots[firstPrivate] = 2 ** 31 - 3;
    slots[shared] = -(2 ** 31 - 3);
    bm.markBits(0, 5);
    expect(slots[firstPrivate]).toBeLessThan(0);
    expect(bm.count()).toBe(5);
    bm.testAndClear(0, 5);
    expect(bm.count()).toBe(0);
  });

  it('fromShared rejects a buffer of the wrong length', () => {
    const shared = { ...DirtyBitmap.create(ODD_SIZE, G).share(), size: 100 * G };
    expectCode(() => DirtyBitmap.fromShared(shared), ErrorCode.BITMAP_GEOMETRY);
  });

  it('fromShared rejects an object without a SharedArrayBuffer', () => {
    const shared = { ...DirtyBitmap.create(ODD_SIZE, G).share(), buffer: new ArrayBuffer(8) as unknown as SharedArrayBuffer };
    expectCode(() => DirtyBitmap.fromShared(shared), ErrorCode.INVALID_OPTION);
  });

  it('a frozen bitmap reopened from share() is still frozen', () => {
    const again = DirtyBitmap.fromShared(withBits(100, [1]).snapshot().share());
    expectCode(() => again.markBits(2, 1), ErrorCode.BITMAP_STATE);
  });

  it('toWords and fromWords round-trip the bits', () => {
    const bm = withBits(100, [0, 31, 32, 99]);
    const copy = DirtyBitmap.fromWords(bm.size, bm.granularity, bm.toWords());
    expect(setBits(copy)).toEqual([0, 31, 32, 99]);
    expect(copy.count()).toBe(4);
  });

  it('fromWords ignores bits past the end of the image', () => {
    const copy = DirtyBitmap.fromWords(ODD_SIZE, G, Uint32Array.of(0xffffffff));
    expect(copy.count()).toBe(11);
  });
});

describe('DirtyBitmap.changed', () => {
  it('resolves true at once when bits are already dirty', async () => {
    await expect(withBits(100, [1]).changed(5_000)).resolves.toBe(true);
  });

  it('resolves false after the timeout when nothing is marked', async () => {
    await expect(withBits(100, []).changed(20)).resolves.toBe(false);
  });

  it('resolves true when a mark turns the count positive', async () => {
    const bm = withBits(100, []);
    const changed = bm.changed(5_000);
    setTimeout(() => bm.mark(0, 1), 5);
    await expect(changed).resolves.toBe(true);
  });

  it('resolves false after the timeout for an image of no bits', async () => {
    await expect(DirtyBitmap.create(0, G).changed(20)).resolves.toBe(false);
  });

  it('waits out the timeout when a drain has left summary bits over clean words', async () => {
    const bm = DirtyBitmap.create(TiB, G);
    for (const bit of [0, 5000, 1_000_000, bm.bitCount - 1]) bm.markBits(bit, 1);
    bm.testAndClear(0, bm.bitCount);
    await expect(bm.changed(20)).resolves.toBe(false);
  });

  it('resolves true when a mark lands after left-over summary bits were dropped', async () => {
    const bm = DirtyBitmap.create(TiB, G);
    bm.markBits(1_000_000, 1);
    bm.testAndClear(0, bm.bitCount);
    const changed = bm.changed(5_000);
    setTimeout(() => bm.markBits(1_000_001, 1), 5);
    await expect(changed).resolves.toBe(true);
    expect(bm.nextDirty(0)).toBe(1_000_001);
  });

  it('resolves true when a mark lands in a bitmap of one word (no summary levels)', async () => {
    const bm = withBits(20, []);
    const changed = bm.changed(5_000);
    setTimeout(() => bm.markBits(19, 1), 5);
    await expect(changed).resolves.toBe(true);
  });

  it('resolves true when a drained bitmap is marked again', async () => {
    const bm = withBits(100, [1]);
    bm.testAndClear(0, 100);
    const changed = bm.changed(5_000);
    setTimeout(() => bm.markBits(5, 3), 5);
    await expect(changed).resolves.toBe(true);
  });
});

/**
 * Property test: random operation sequences run on a DirtyBitmap and on a plain model (a Set of
 * bit numbers, searched bit by bit); every answer must agree. Seeded, so a failure names its seed.
 */
import { describe, expect, it } from 'vitest';
import { DirtyBitmap, type Succession } from '../../src/bitmap/DirtyBitmap.js';
import { DirtyExtentCursor } from '../../src/bitmap/DirtyExtentCursor.js';
import { randomInt, seededRandom } from '../helpers/random.js';

const SEEDS = 400;
const OPS_PER_SEED = 150;

/** The obvious implementation of every query, one bit at a time. */
class Model {
  bits = new Set<number>();
  constructor(
    readonly size: number,
    readonly granularity: number,
    readonly bitCount: number,
  ) {}

  setRange(first: number, count: number): void {
    for (let b = first; b < first + count; b++) this.bits.add(b);
  }

  nextDirty(from: number, limit = this.bitCount): number {
    for (let b = from; b < limit; b++) if (this.bits.has(b)) return b;
    return -1;
  }

  nextClean(from: number, limit = this.bitCount): number {
    for (let b = from; b < limit; b++) if (!this.bits.has(b)) return b;
    return limit;
  }

  extent(first: number, end: number): [number, number] {
    return [first * this.granularity, Math.min(end * this.granularity, this.size) - first * this.granularity];
  }

  runs(from: number, limit: number, maxBits: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = from;
    for (;;) {
      const start = this.nextDirty(pos, limit);
      if (start < 0) return out;
      const end = this.nextClean(start, Math.min(limit, start + maxBits));
      out.push(this.extent(start, end));
      pos = end;
    }
  }

  maxBits(maxBytes: number): number {
    return Math.max(1, Math.min(this.bitCount, Math.floor(maxBytes / this.granularity)));
  }

  dirtyBytes(): number {
    const last = this.bitCount - 1;
    return this.bits.size * this.granularity - (this.bits.has(last) ? this.granularity - this.extent(last, last + 1)[1] : 0);
  }
}

/** The cursor's documented behaviour, bit by bit. */
class ModelCursor {
  position = 0;
  constructor(readonly model: Model) {}

  take(maxExtents: number, maxBytes: number): number[] {
    const m = this.model;
    const out: number[] = [];
    if (m.bitCount === 0) return out;
    const maxBits = m.maxBits(maxBytes);
    const startedAt = this.position;
    let limit = m.bitCount;
    let pos = startedAt;
    while (out.length / 2 < maxExtents) {
      const start = m.nextDirty(pos, limit);
      if (start < 0) {
        if (limit !== m.bitCount || startedAt === 0) break;
        limit = startedAt;
        pos = 0;
        continue;
      }
      const end = m.nextClean(start, Math.min(m.bitCount, start + maxBits));
      for (let b = start; b < end; b++) m.bits.delete(b);
      out.push(...m.extent(start, end));
      pos = end;
    }
    this.position = pos >= m.bitCount ? 0 : pos;
    return out;
  }
}

function geometry(random: () => number): { size: number; granularity: number } {
  const granularity = [512, 4096, 65536][randomInt(random, 3)]!;
  const roll = random();
  // Mostly small and medium bitmaps (crossing words and level-1 summary words); some cross
  // level-2 summary words (32768 bits).
  const bitCount = roll < 0.1 ? 1 + randomInt(random, 40) : roll < 0.9 ? 30 + randomInt(random, 5000) : 32_000 + randomInt(random, 40_000);
  const partial = random() < 0.5 ? 0 : 1 + randomInt(random, granularity - 1);
  return { size: (bitCount - (partial ? 1 : 0)) * granularity + partial, granularity };
}

function bitsOfBitset(bitset: Uint32Array, first: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < bitset.length * 32; i++) if ((bitset[i >>> 5]! >>> (i & 31)) & 1) out.push(first + i);
  return out;
}

function sortedBits(set: Set<number>): number[] {
  return [...set].sort((a, b) => a - b);
}

function runSeed(seed: number): void {
  const random = seededRandom(seed);
  const { size, granularity } = geometry(random);
  const bm = DirtyBitmap.create(size, granularity);
  const n = bm.bitCount;
  const model = new Model(size, granularity, n);
  const cursor = new DirtyExtentCursor(bm);
  const modelCursor = new ModelCursor(model);
  let succession: Succession | undefined;
  let frozenModel: Set<number> | undefined;
  const bit = (): number => randomInt(random, n + 1);
  const span = (from: number): number => randomInt(random, Math.min(n - from, random() < 0.8 ? 70 : 3000) + 1);
  const maxBytes = (): number => (random() < 0.2 ? 1 + randomInt(random, granularity) : granularity * (1 + randomInt(random, 40)));

  for (let op = 0; op < OPS_PER_SEED; op++) {
    const where = `seed ${seed}, op ${op}`;
    const roll = random();
    if (roll < 0.25) {
      const offset = randomInt(random, size + 1);
      const length = randomInt(random, Math.min(size - offset, granularity * 80) + 1);
      bm.mark(offset, length);
      if (length > 0) {
        const first = Math.floor(offset / granularity);
        model.setRange(first, Math.floor((offset + length - 1) / granularity) - first + 1);
      }
    } else if (roll < 0.35) {
      const first = bit();
      const count = span(first);
      bm.markBits(first, count);
      model.setRange(first, count);
    } else if (roll < 0.47) {
      const first = bit();
      const count = span(first);
      const expected = sortedBits(model.bits).filter((b) => b >= first && b < first + count);
      same(bitsOfBitset(bm.testAndClear(first, count), first), expected, where);
      for (const b of expected) model.bits.delete(b);
    } else if (roll < 0.55) {
      const from = bit();
      same(bm.nextDirty(from), model.nextDirty(from), where);
      same(bm.nextClean(from), model.nextClean(from), where);
    } else if (roll < 0.62) {
      const offset = randomInt(random, size + 1);
      const length = randomInt(random, Math.min(size - offset, granularity * 100) + 1);
      const first = Math.floor(offset / granularity);
      const expected = length > 0 && model.nextDirty(first, Math.floor((offset + length - 1) / granularity) + 1) >= 0;
      same(bm.isDirty(offset, length), expected, where);
      const last = Math.floor((offset + length - 1) / granularity);
      same(bm.allDirty(offset, length), length > 0 && model.nextClean(first, last + 1) > last, where);
    } else if (roll < 0.72) {
      const fromBit = bit();
      const bytes = maxBytes();
      const wrap = random() < 0.5;
      const maxBits = model.maxBits(bytes);
      const expected = model.runs(fromBit, n, maxBits);
      if (wrap && fromBit > 0) expected.push(...model.runs(0, fromBit, maxBits));
      same([...bm.extents({ fromBit, maxBytes: bytes, wrap })], expected, where);
    } else if (roll < 0.82) {
      const maxExtents = 1 + randomInt(random, 6);
      const bytes = maxBytes();
      const out: number[] = [];
      cursor.take(out, maxExtents, bytes);
      same(out, modelCursor.take(maxExtents, bytes), where);
    } else if (roll < 0.86) {
      const other = DirtyBitmap.create(size, granularity);
      const first = bit();
      const count = span(first);
      other.markBits(first, count);
      bm.merge(other);
      model.setRange(first, count);
    } else if (roll < 0.92) {
      if (succession === undefined) {
        succession = bm.freeze();
        frozenModel = model.bits;
        model.bits = new Set();
      } else {
        same(sortedBits(setBitsOf(succession.frozen)), sortedBits(frozenModel!), where);
        if (random() < 0.5) {
          succession.abort();
          for (const b of frozenModel!) model.bits.add(b);
        } else {
          succession.commit();
        }
        succession = undefined;
      }
    } else if (roll < 0.94) {
      bm.clear();
      model.bits.clear();
    } else if (roll < 0.95) {
      bm.markAll();
      model.setRange(0, n);
    } else {
      const snap = bm.snapshot();
      same(sortedBits(setBitsOf(snap)), sortedBits(model.bits), where);
    }
    same(bm.count(), model.bits.size, where);
    same(bm.dirtyBytes(), model.dirtyBytes(), where);
  }
  same([...bm.extents()], model.runs(0, n, n), `seed ${seed}, at the end`);
}

/** Thousands of deep expect() calls on large arrays take seconds: compare cheaply, let expect() report a difference. */
function same(actual: unknown, expected: unknown, where: string): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) expect(actual, where).toEqual(expected);
}

function setBitsOf(bm: DirtyBitmap): Set<number> {
  const bits = new Set<number>();
  for (let b = bm.nextDirty(0); b >= 0; b = bm.nextDirty(b + 1)) bits.add(b);
  return bits;
}

describe('DirtyBitmap against a model', () => {
  it(`agrees with a Set of bit numbers over ${SEEDS} random operation sequences`, () => {
    for (let seed = 1; seed <= SEEDS; seed++) runSeed(seed);
  });
});

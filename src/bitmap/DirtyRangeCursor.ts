import type { DirtyBitmap } from './DirtyBitmap.js';
import { maxBitsFor, RunClaimer } from './RunClaimer.js';

/**
 * Claims the dirty extents inside some byte ranges, each front to back, in order, once: a phase of
 * a mirror's first pass (src/job/MirrorFirstPass.ts). Like {@link DirtyExtentCursor} it clears
 * each extent's bits before handing it out (invariant 2); unlike it, it never goes round again, so
 * a bit set behind it stays set for the mirror's copier.
 */
export class DirtyRangeCursor {
  readonly #bitmap: DirtyBitmap;
  /** Ranges in bits: [first, end). */
  readonly #ranges: ReadonlyArray<readonly [number, number]>;
  #index = 0;
  #pos: number;
  #remainingBits: number;
  #claimer: RunClaimer | undefined;

  /**
   * `ranges`: byte ranges. A granule belongs to the range its first byte is in, so ranges that
   * meet inside a granule (phases cut at a chunk smaller than the granularity) never both claim it.
   */
  constructor(bitmap: DirtyBitmap, ranges: ReadonlyArray<readonly [number, number]>) {
    this.#bitmap = bitmap;
    const g = bitmap.granularity;
    this.#ranges = ranges
      .map(([start, end]) => [Math.ceil(start / g), Math.min(bitmap.bitCount, Math.ceil(end / g))] as const)
      .filter(([first, end]) => end > first);
    this.#pos = this.#ranges[0]?.[0] ?? 0;
    this.#remainingBits = this.#ranges.reduce((n, [first, end]) => n + end - first, 0);
  }

  /** True once every range has been walked. */
  get exhausted(): boolean {
    return this.#index >= this.#ranges.length;
  }

  /** Bytes of the ranges not yet walked (dirty or not): at most what is left to hand out. */
  get remaining(): number {
    return this.#remainingBits * this.#bitmap.granularity;
  }

  /** The byte ranges not yet walked, in order. */
  rest(): Array<[number, number]> {
    const rest: Array<[number, number]> = [];
    for (let i = this.#index; i < this.#ranges.length; i++) {
      const [first, end] = this.#ranges[i]!;
      const from = i === this.#index ? this.#pos : first;
      if (from < end) rest.push([from * this.#bitmap.granularity, Math.min(end * this.#bitmap.granularity, this.#bitmap.size)]);
    }
    return rest;
  }

  /**
   * Claims up to `maxExtents` dirty extents of at most `maxBytes` each (whole granules, at least
   * one), appending `offset, length` pairs to `out`; returns how many it appended.
   */
  take(out: number[], maxExtents: number, maxBytes: number): number {
    const claim = (this.#claimer = RunClaimer.reuse(this.#claimer, this.#bitmap, maxBitsFor(this.#bitmap, maxBytes)));
    let n = 0;
    while (n < maxExtents && this.#index < this.#ranges.length) {
      const end = this.#ranges[this.#index]![1];
      const next = claim.next(this.#pos, end, out);
      const to = next < 0 ? end : next;
      this.#remainingBits -= to - this.#pos;
      this.#pos = to;
      if (claim.claimed) n++;
      if (this.#pos >= end) this.#pos = this.#ranges[++this.#index]?.[0] ?? end;
    }
    return n;
  }
}

import type { BatchOutcome } from './CopyScheduler.js';

/**
 * Where the scheduler gets its work. A bulk copy walks the image once; a mirror job drains its
 * dirty bitmap (clearing bits as it claims them: invariant 2 of docs/architecture.md).
 */
export interface ExtentSource {
  /**
   * Claims up to `maxExtents` extents of at most `maxBytes` each, appending offset, length pairs
   * to `out`. Returns how many it appended (0: nothing to do now).
   */
  take(out: number[], maxExtents: number, maxBytes: number): number;
  /** True once `take` will never return more work. A live mirror's source never is. */
  readonly exhausted: boolean;
  /** Bytes not yet handed out, where the source knows (a bulk copy's phase does; a live mirror's does not). */
  readonly remaining?: number;
}

/**
 * The extents of one phase of a bulk copy (src/job/BulkCopy.ts): its ranges, each front to back,
 * once. A copy hands them out as they are; a mirror's first pass claims the dirty bits in them.
 */
export interface PhaseExtentSource extends ExtentSource {
  readonly remaining: number;
  /** The ranges not yet walked, in order: a phase cut short leaves them to the next. */
  rest(): Array<[number, number]>;
  /**
   * A batch it handed out has finished (`outcome.extents` is the array `take` appended to): a
   * mirror's pass ends its claims here, marking dirty again what was not copied.
   */
  finished?(outcome: BatchOutcome): void;
  /**
   * Takes back [start, end), handed out and not copied (the rest of a stream that stopped at
   * data or zeros, which it begins with: `holds`), to hand out again before anything else. A
   * source without it leaves such rests to a later phase.
   */
  giveBack?(start: number, end: number, holds: RangeHolds): void;
  /**
   * As `take`, from a stretch known to begin with data (`data`), or from one given back as
   * beginning with zeros or not known (`other`), the latest given back first; 0 if there is none.
   */
  takeOf?(kind: StretchKind, out: number[], maxExtents: number, maxBytes: number): number;
  /** Whether `takeOf(kind)` would hand out anything. */
  has?(kind: StretchKind): boolean;
}

/** Which stretches {@link PhaseExtentSource.takeOf} takes from. */
export type StretchKind = 'data' | 'other';

/** What a range given back begins with. */
export type RangeHolds = 'data' | 'zeros';

/** The whole image, front to back, once: a bulk copy. */
export class LinearExtentSource implements ExtentSource {
  readonly #size: number;
  #next: number;

  constructor(size: number, start = 0) {
    this.#size = size;
    this.#next = start;
  }

  get exhausted(): boolean {
    return this.#next >= this.#size;
  }

  /** Bytes not yet handed out. */
  get remaining(): number {
    return this.#size - this.#next;
  }

  take(out: number[], maxExtents: number, maxBytes: number): number {
    let n = 0;
    while (n < maxExtents && this.#next < this.#size) {
      const length = Math.min(maxBytes, this.#size - this.#next);
      out.push(this.#next, length);
      this.#next += length;
      n++;
    }
    return n;
  }
}

/** Several byte ranges, each front to back, in order, once: a phase of a bulk copy. */
export class RangesExtentSource implements PhaseExtentSource {
  readonly #ranges: ReadonlyArray<readonly [number, number]>;
  /** Ranges given back, the latest last: handed out first, latest first. */
  readonly #returned: Array<{ start: number; readonly end: number; holds: RangeHolds }> = [];
  #index = 0;
  #next: number;
  #remaining: number;

  constructor(ranges: ReadonlyArray<readonly [number, number]>) {
    this.#ranges = ranges;
    this.#next = ranges[0]?.[0] ?? 0;
    this.#remaining = ranges.reduce((n, [start, end]) => n + Math.max(0, end - start), 0);
  }

  get exhausted(): boolean {
    return this.#returned.length === 0 && this.#index >= this.#ranges.length;
  }

  get remaining(): number {
    return this.#remaining;
  }

  giveBack(start: number, end: number, holds: RangeHolds): void {
    if (end <= start) return;
    // Zeros at `start` end the data found before it: ranges given back as beginning with data
    // that begin further on are no longer known to.
    if (holds === 'zeros') for (const r of this.#returned) if (r.holds === 'data' && r.start >= start) r.holds = 'zeros';
    this.#returned.push({ start, end, holds });
    this.#remaining += end - start;
  }

  /** The ranges not yet handed out, in order. */
  rest(): Array<[number, number]> {
    const rest = this.#returned.map(({ start, end }): [number, number] => [start, end]).sort((a, b) => a[0] - b[0]);
    for (let i = this.#index; i < this.#ranges.length; i++) {
      const [start, end] = this.#ranges[i]!;
      const from = i === this.#index ? this.#next : start;
      if (from < end) rest.push([from, end]);
    }
    return rest;
  }

  has(kind: StretchKind): boolean {
    return this.#latest(kind) >= 0 || (kind === 'other' && this.#index < this.#ranges.length);
  }

  takeOf(kind: StretchKind, out: number[], maxExtents: number, maxBytes: number): number {
    const i = this.#latest(kind);
    if (i >= 0) return this.#takeReturned(i, out, maxExtents, maxBytes);
    return kind === 'other' ? this.#takeRanges(out, maxExtents, maxBytes) : 0;
  }

  take(out: number[], maxExtents: number, maxBytes: number): number {
    // A range given back comes first.
    if (this.#returned.length > 0) return this.#takeReturned(this.#returned.length - 1, out, maxExtents, maxBytes);
    return this.#takeRanges(out, maxExtents, maxBytes);
  }

  /** Index of the latest range given back of `kind`, or -1. */
  #latest(kind: StretchKind): number {
    return this.#returned.findLastIndex((r) => (r.holds === 'data') === (kind === 'data'));
  }

  /** Takes from the range given back at `index`, alone: a stream walks one stretch of the image. */
  #takeReturned(index: number, out: number[], maxExtents: number, maxBytes: number): number {
    const back = this.#returned[index]!;
    let n = 0;
    while (n < maxExtents && back.start < back.end) {
      const length = Math.min(maxBytes, back.end - back.start);
      out.push(back.start, length);
      this.#remaining -= length;
      back.start += length;
      n++;
    }
    if (back.start >= back.end) this.#returned.splice(index, 1);
    return n;
  }

  #takeRanges(out: number[], maxExtents: number, maxBytes: number): number {
    let n = 0;
    while (n < maxExtents && this.#index < this.#ranges.length) {
      const end = this.#ranges[this.#index]![1];
      const length = Math.min(maxBytes, end - this.#next);
      if (length > 0) {
        out.push(this.#next, length);
        this.#next += length;
        this.#remaining -= length;
        n++;
      }
      if (this.#next >= end) this.#next = this.#ranges[++this.#index]?.[0] ?? end;
    }
    return n;
  }
}

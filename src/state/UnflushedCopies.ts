import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';

/** The copies of one stretch between target flushes. */
export interface CopyPeriod {
  /** Ranges as offset, length pairs. */
  readonly ranges: number[];
  /** Copies claimed in this period and not yet finished. */
  outstanding: number;
}

/**
 * Ranges whose bits the copier cleared (invariant 2: before it reads) but whose copy may not be
 * durable on the target yet: in flight, or written and not flushed. A saved bitmap must still
 * count them dirty, or a crash would lose them. They are kept by period; a period is dropped
 * once every copy in it had finished before a target flush that then succeeded.
 */
export class UnflushedCopies {
  #periods: CopyPeriod[] = [{ ranges: [], outstanding: 0 }];

  get #current(): CopyPeriod {
    return this.#periods[this.#periods.length - 1]!;
  }

  /** The copier claimed these ranges for one copy task (call {@link finished} with the result once it is done). */
  claim(ranges: readonly number[]): CopyPeriod {
    const p = this.#current;
    for (const v of ranges) p.ranges.push(v);
    p.outstanding++;
    return p;
  }

  /** A claimed copy task is done (whatever its outcome: a failed copy marks its bits again). */
  finished(period: CopyPeriod): void {
    period.outstanding--;
  }

  /** A range was written to both sides and its bits cleared (a write-blocking write). */
  written(offset: number, length: number): void {
    this.#current.ranges.push(offset, length);
  }

  /** Ranges held now. */
  get rangeCount(): number {
    let n = 0;
    for (const p of this.#periods) n += p.ranges.length / 2;
    return n;
  }

  /**
   * Flushes the target with `flush` and drops the periods whose copies had all finished before
   * it began. A failed flush drops nothing (and rethrows).
   */
  async flushed(flush: () => Promise<void>): Promise<void> {
    const done = this.#periods.filter((p) => p.outstanding === 0);
    this.#periods.push({ ranges: [], outstanding: 0 });
    await flush();
    this.#periods = this.#periods.filter((p) => !done.includes(p));
    if (this.#periods.length === 0) this.#periods.push({ ranges: [], outstanding: 0 });
  }

  /** Marks every range held in `bitmap` (a snapshot about to be saved). */
  addTo(bitmap: DirtyBitmap): void {
    for (const p of this.#periods) for (let i = 0; i < p.ranges.length; i += 2) bitmap.mark(p.ranges[i]!, p.ranges[i + 1]!);
  }
}

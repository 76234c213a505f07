/** A held byte range. */
interface Hold {
  readonly start: number;
  readonly end: number;
  readonly kind: 'copy' | 'write';
}

/**
 * Keeps overlapping operations apart. A write-blocking write waits for overlapping copies and
 * writes in flight (invariant 3 of docs/architecture.md). A copy is not started over a range that a write holds
 * or waits for, nor over one another copy holds: two copies of one extent in flight could land
 * out of order, the older read last, and leave stale data with no dirty bit to fix it (QEMU's
 * mirror waits on such conflicts too). The caller puts a refused extent back as dirty.
 * Holders are few (operations in flight), so a list scan is enough.
 */
export class RangeLocks {
  readonly #holds = new Set<Hold>();
  readonly #waitingWrites = new Set<Hold>();
  #changed: Array<() => void> = [];

  /** Writes holding or waiting for a range. */
  get writes(): number {
    let n = this.#waitingWrites.size;
    for (const h of this.#holds) if (h.kind === 'write') n++;
    return n;
  }

  /** Waits until no copy or write overlaps [start, end), then holds it; call the result to release. */
  async acquireWrite(start: number, end: number): Promise<() => void> {
    const want: Hold = { start, end, kind: 'write' };
    this.#waitingWrites.add(want);
    try {
      while (this.#overlaps(start, end, this.#holds)) await this.#nextChange();
    } finally {
      this.#waitingWrites.delete(want);
    }
    this.#holds.add(want);
    return () => this.#release(want);
  }

  /** Holds [start, end) for a copy unless another copy or a write holds, or a write waits for, any of it. */
  tryHoldCopy(start: number, end: number): (() => void) | undefined {
    if (this.#overlaps(start, end, this.#holds) || this.#overlaps(start, end, this.#waitingWrites)) return undefined;
    const hold: Hold = { start, end, kind: 'copy' };
    this.#holds.add(hold);
    return () => this.#release(hold);
  }

  #overlaps(start: number, end: number, holds: Iterable<Hold>): boolean {
    for (const h of holds) if (h.start < end && start < h.end) return true;
    return false;
  }

  #release(hold: Hold): void {
    this.#holds.delete(hold);
    const waiters = this.#changed;
    this.#changed = [];
    for (const w of waiters) w();
  }

  #nextChange(): Promise<void> {
    return new Promise((resolve) => this.#changed.push(resolve));
  }
}

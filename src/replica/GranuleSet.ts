/**
 * A set of granule numbers below a fixed count, one bit each: 2 MiB for a 1 TiB disk at 64 KiB
 * granules, whatever share of it a checkpoint interval writes (a Set of numbers would take tens
 * of bytes per granule).
 */
export class GranuleSet {
  readonly capacity: number;
  readonly #words: Uint32Array;
  #size = 0;

  /** An empty set of granules `0 .. capacity - 1`. */
  constructor(capacity: number, granules: Iterable<number> = []) {
    this.capacity = capacity;
    this.#words = new Uint32Array(Math.ceil(capacity / 32));
    for (const g of granules) this.add(g);
  }

  /** Granules in the set. */
  get size(): number {
    return this.#size;
  }

  has(g: number): boolean {
    return (this.#words[g >>> 5] & (1 << (g & 31))) !== 0;
  }

  add(g: number): void {
    const i = g >>> 5;
    const bit = 1 << (g & 31);
    if ((this.#words[i] & bit) !== 0) return;
    this.#words[i] |= bit;
    this.#size++;
  }

  clear(): void {
    this.#words.fill(0);
    this.#size = 0;
  }

  /** The granules, in increasing order. */
  *values(): Generator<number> {
    for (let i = 0; i < this.#words.length; i++) {
      let w = this.#words[i];
      while (w !== 0) {
        const low = w & -w;
        yield i * 32 + (31 - Math.clz32(low));
        w ^= low;
      }
    }
  }
}

/** Buffers are kept by size class (a power of two), so extents of any length reuse them. */
const MIN_CLASS_BYTES = 64 * 1024;
/** Spare buffers kept per size class; more are released to the garbage collector. */
const MAX_SPARE_PER_CLASS = 64;

function sizeClass(bytes: number): number {
  return Math.max(MIN_CLASS_BYTES, 2 ** Math.ceil(Math.log2(bytes)));
}

/**
 * Reusable I/O buffers for one worker. Allocation goes through `allocate` (a device's
 * `allocBuffer`, which aligns for O_DIRECT); a taken buffer is a view of the requested length.
 */
export class BufferPool {
  readonly #spare = new Map<number, Buffer[]>();
  readonly #allocate: (bytes: number) => Promise<Buffer>;

  constructor(allocate: (bytes: number) => Promise<Buffer>) {
    this.#allocate = allocate;
  }

  async take(bytes: number): Promise<Buffer> {
    const cls = sizeClass(bytes);
    const buf = this.#spare.get(cls)?.pop() ?? (await this.#allocate(cls));
    return buf.subarray(0, bytes);
  }

  /** Returns a buffer from `take`. */
  give(view: Buffer): void {
    const whole = Buffer.from(view.buffer, view.byteOffset, sizeClass(view.length));
    const list = this.#spare.get(whole.length) ?? [];
    if (list.length < MAX_SPARE_PER_CLASS) list.push(whole);
    this.#spare.set(whole.length, list);
  }
}

import { allocSkewedBuffer } from '../../util/skewedBuffer.js';

/** Buffers are kept by size class (a power of two from 64 KiB), so reads of any length reuse them. */
const MIN_CLASS_BYTES = 64 * 1024;

function sizeClass(bytes: number): number {
  return Math.max(MIN_CLASS_BYTES, 2 ** Math.ceil(Math.log2(Math.max(1, bytes))));
}

/**
 * READ buffers of one NBD server session, reused once the socket has sent them (a fresh buffer
 * per request costs page faults). Unlike the workers' pool, what it keeps spare is bounded in
 * bytes: a client's burst of large reads must not leave the server holding their buffers.
 */
export class ReadBufferPool {
  readonly #spare = new Map<number, Buffer[]>();
  readonly #maxSpareBytes: number;
  #spareBytes = 0;

  constructor(maxSpareBytes: number) {
    this.#maxSpareBytes = maxSpareBytes;
  }

  /** Bytes kept spare now. */
  get spareBytes(): number {
    return this.#spareBytes;
  }

  /** A buffer of `bytes` (a view of a size-class buffer). */
  take(bytes: number): Buffer {
    const cls = sizeClass(bytes);
    const spare = this.#spare.get(cls)?.pop();
    if (spare) this.#spareBytes -= cls;
    return (spare ?? allocSkewedBuffer(cls)).subarray(0, bytes);
  }

  /** Returns a buffer from `take`; kept for reuse while the spare bytes stay within the bound. */
  give(view: Buffer): void {
    const cls = sizeClass(view.length);
    if (this.#spareBytes + cls > this.#maxSpareBytes) return; // let the collector have it
    const whole = Buffer.from(view.buffer, view.byteOffset, cls);
    const list = this.#spare.get(cls) ?? [];
    list.push(whole);
    this.#spare.set(cls, list);
    this.#spareBytes += cls;
  }
}

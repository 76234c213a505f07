/** The rate limit is kept over slices of this length, as QEMU's block jobs do. */
export const RATE_SLICE_MS = 100;

/**
 * A bytes-per-second ceiling kept over 100 ms slices. A request is accounted after it is sent,
 * so the first request of a slice always goes, and a slice whose requests passed its quota lasts
 * until its bytes are paid for at the current speed (so `setSpeed` takes effect at once, also for
 * a caller already waiting: it asks `delay` again).
 */
export class RateLimiter {
  #bytesPerSecond: number;
  #sliceStart = Number.NEGATIVE_INFINITY;
  #dispatched = 0;

  /** `bytesPerSecond` 0 means unlimited. */
  constructor(bytesPerSecond = 0) {
    this.#bytesPerSecond = bytesPerSecond;
  }

  get bytesPerSecond(): number {
    return this.#bytesPerSecond;
  }

  setSpeed(bytesPerSecond: number): void {
    this.#bytesPerSecond = bytesPerSecond;
  }

  /** Bytes one slice allows (Infinity when unlimited). */
  get sliceQuota(): number {
    return this.#bytesPerSecond === 0 ? Number.POSITIVE_INFINITY : (this.#bytesPerSecond * RATE_SLICE_MS) / 1000;
  }

  /** Records bytes just sent. */
  account(bytes: number, nowMs: number): void {
    if (nowMs >= this.#sliceEnd()) {
      this.#sliceStart = nowMs;
      this.#dispatched = 0;
    }
    this.#dispatched += bytes;
  }

  /** Milliseconds to wait before the next request may go (0: now). */
  delay(nowMs: number): number {
    if (this.#bytesPerSecond === 0 || this.#dispatched < this.sliceQuota) return 0;
    return Math.max(0, this.#sliceEnd() - nowMs);
  }

  /** A slice ends after its length, or once its bytes are paid for, whichever is later. */
  #sliceEnd(): number {
    const paidFor = this.#bytesPerSecond === 0 ? 0 : (this.#dispatched / this.#bytesPerSecond) * 1000;
    return this.#sliceStart + Math.max(RATE_SLICE_MS, paidFor);
  }
}

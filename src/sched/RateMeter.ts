/** Half-life of the smoothing: a rate reflects roughly the last second or two. */
const DEFAULT_HALF_LIFE_MS = 1000;

/**
 * A smoothed rate (units per second) from a running total sampled now and then: an exponentially
 * weighted average whose weight depends on the time between samples, so irregular sampling is fine.
 */
export class RateMeter {
  readonly #halfLifeMs: number;
  #lastTotal = 0;
  #lastAt: number | undefined;
  #rate = 0;
  #primed = false;

  constructor(halfLifeMs = DEFAULT_HALF_LIFE_MS) {
    this.#halfLifeMs = halfLifeMs;
  }

  /** Feeds the running total as of `nowMs`; returns the smoothed rate. */
  sample(total: number, nowMs: number): number {
    if (this.#lastAt === undefined) {
      this.#lastAt = nowMs;
      this.#lastTotal = total;
      return this.#rate;
    }
    const dt = nowMs - this.#lastAt;
    if (dt <= 0) return this.#rate;
    const instant = ((total - this.#lastTotal) * 1000) / dt;
    const keep = Math.pow(0.5, dt / this.#halfLifeMs);
    this.#rate = this.#primed ? keep * this.#rate + (1 - keep) * instant : instant;
    this.#primed = true;
    this.#lastAt = nowMs;
    this.#lastTotal = total;
    return this.#rate;
  }

  /** The rate as of the last sample. */
  get rate(): number {
    return this.#rate;
  }
}

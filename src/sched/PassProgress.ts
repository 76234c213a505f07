import { AbortError } from '../errors.js';
import { formatBytes } from '../util/size.js';
import { RateMeter } from './RateMeter.js';

/** Default time between two progress reports of a pass over an image (a copy, a verify). */
export const DEFAULT_PROGRESS_INTERVAL_MS = 100;

/** Where a pass over an image stands: what every progress report of one carries. */
export interface PassProgressReport {
  readonly bytesDone: number;
  readonly bytesTotal: number;
  readonly elapsedSeconds: number;
  /** Smoothed rate, bytes per second. */
  readonly rate: number;
  /** Seconds to go at the current rate (Infinity while unknown). */
  readonly etaSeconds: number;
}

/** The rate, ETA and interruption message of one pass over `total` bytes, started at `startedMs`. */
export class PassProgress {
  readonly #meter = new RateMeter();
  readonly #total: number;
  readonly #startedMs: number;

  constructor(total: number, startedMs: number) {
    this.#total = total;
    this.#startedMs = startedMs;
  }

  /** Samples the pass at `bytesDone`. */
  sample(bytesDone: number): PassProgressReport {
    const now = performance.now();
    const rate = this.#meter.sample(bytesDone, now);
    const remaining = this.#total - bytesDone;
    return {
      bytesDone,
      bytesTotal: this.#total,
      elapsedSeconds: (now - this.#startedMs) / 1000,
      rate,
      etaSeconds: remaining === 0 ? 0 : rate > 0 ? remaining / rate : Number.POSITIVE_INFINITY,
    };
  }

  /** The error of a pass stopped through its signal: `interrupted: VERB X of Y (P%)` and `tail`. */
  interrupted(verb: string, bytesDone: number, tail = ''): AbortError {
    const total = this.#total;
    const pct = total === 0 ? '0.0' : ((100 * bytesDone) / total).toFixed(1);
    return new AbortError(`interrupted: ${verb} ${formatBytes(bytesDone)} of ${formatBytes(total)} (${pct}%)${tail}`, {
      progress: { bytesDone, bytesTotal: total },
    });
  }
}

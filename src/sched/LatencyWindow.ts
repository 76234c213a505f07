import { createRequire } from 'node:module';
import type { Histogram } from 'hdr-histogram-js';

// The one histogram class used, from its own module: the package's index loads every kind of
// histogram, its log codecs and a WebAssembly build, 30 ms of every mirror's start-up here.
const { default: Int32Histogram } = createRequire(import.meta.url)('hdr-histogram-js/dist/Int32Histogram.js') as {
  default: new (lowestDiscernibleValue: number, highestTrackableValue: number, numberOfSignificantValueDigits: number) => Histogram;
};

/** Latencies are kept in microseconds, from 1 µs to a minute, to 2 significant digits. */
const LOWEST_MICROS = 1;
const HIGHEST_MICROS = 60_000_000;
const SIGNIFICANT_DIGITS = 2;

/** Percentiles of a set of latencies, in microseconds. */
export interface LatencyStats {
  readonly count: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
  readonly mean: number;
}

/** Stats of no samples. */
export const NO_LATENCIES: LatencyStats = { count: 0, p50: 0, p99: 0, p999: 0, max: 0, mean: 0 };

/**
 * A latency histogram (hdr-histogram-js) read and restarted window by window: the tuner looks at
 * the last ~100 ms, not at everything since the start. A second, never-reset histogram keeps the
 * totals for reports.
 */
export class LatencyWindow {
  readonly #window: Histogram;
  readonly #total: Histogram;

  constructor() {
    this.#window = new Int32Histogram(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS);
    this.#total = new Int32Histogram(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS);
  }

  record(micros: number): void {
    if (!(micros >= 0)) return;
    const v = Math.min(HIGHEST_MICROS, Math.max(LOWEST_MICROS, Math.round(micros)));
    this.#window.recordValue(v);
    this.#total.recordValue(v);
  }

  /** Stats of the samples since the last `take`; starts a new window. */
  take(): LatencyStats {
    const stats = statsOf(this.#window);
    this.#window.reset();
    return stats;
  }

  /** Stats of every sample so far. */
  total(): LatencyStats {
    return statsOf(this.#total);
  }
}

function statsOf(h: Histogram): LatencyStats {
  if (h.totalCount === 0) return NO_LATENCIES;
  return {
    count: h.totalCount,
    p50: h.getValueAtPercentile(50),
    p99: h.getValueAtPercentile(99),
    p999: h.getValueAtPercentile(99.9),
    max: h.maxValue,
    mean: h.mean,
  };
}

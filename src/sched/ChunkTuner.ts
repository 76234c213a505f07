import type { LatencyStats } from './LatencyWindow.js';

/** The range the tuner moves in. Sizes in bytes. */
export interface TunerLimits {
  /** Smallest chunk (the bitmap granularity). Chunks are powers of two. */
  readonly minChunk: number;
  /** Largest chunk (8 MiB by default, and never more than a device takes in one request). */
  readonly maxChunk: number;
  /** Ceiling of bytes in flight (the job's buffer size). */
  readonly maxInFlight: number;
  /** Most copy operations in flight (libuv's thread pool runs the file I/O). */
  readonly maxQueueDepth: number;
  /**
   * Share of the best throughput measured that the copy keeps while the application is over its
   * latency target (default {@link DEFAULT_MIN_COPY_SHARE}): the floor that bounds how long a busy
   * application can hold the copy back.
   */
  readonly minCopyShare?: number;
}

/**
 * The default {@link TunerLimits.minCopyShare}. A 1 GiB mirror under fio's unthrottled 4 KiB
 * writes (bench:mirror, 2026-12-01) was not ready within 20 s with the old floor of 5 % (it had
 * copied 0.43 of the image) and was ready in 14 s with half, the writer keeping 59 % of its IOPS
 * against 67 % and its p99 alike (4.4 ms); at 3000 IOPS, ready in 11 s instead of never.
 */
export const DEFAULT_MIN_COPY_SHARE = 0.5;

/** What happened during one decision window. */
export interface TunerWindow {
  readonly seconds: number;
  readonly bytesCopied: number;
  /** Bytes dirty or in flight at the end of the window. */
  readonly backlogBytes: number;
  /** The application's intercepted writes during the window. */
  readonly app: LatencyStats;
  /** The user's speed limit, not the tuner's own pace, held the copier back during the window. */
  readonly rateLimited: boolean;
  /**
   * Mean size of the extents dispatched in the window (none: a chunk). Scattered dirty granules
   * make extents far smaller than a chunk; the depth then counts them, so that the bytes in flight,
   * not the operations, stay what the tuner chose.
   */
  readonly meanExtentBytes?: number;
}

/** Why the tuner did what it did. */
export type TuningReason =
  | 'app-latency' // the application's p99 passed the target: less in flight, then a slower pace
  | 'headroom' // latency well under the target: a faster pace, then more in flight
  | 'climb' // larger or smaller chunk, the way throughput improved
  | 'reverse' // throughput fell: back the other way
  | 'hold' // throughput flat: stay a few windows, then probe again
  | 'idle' // nothing to copy
  | 'rate-limited' // the user's speed limit, not the disk, sets the pace
  | 'remeasure'; // the application's writes changed cost (write-blocking, or over the target with the copy at its floor): the target is measured again

/** A decision, as the job reports it in its `tuning` events. */
export interface TuningDecision {
  readonly chunkSize: number;
  readonly queueDepth: number;
  /** Bytes the tuner allows in flight. */
  readonly inFlight: number;
  /** Copy rate the tuner holds the copier to, bytes per second (undefined: none). */
  readonly pace: number | undefined;
  readonly reason: TuningReason;
  /** Copy throughput of the window, bytes per second. */
  readonly throughput: number;
  /** The application's write p99 in the window (µs), when it wrote enough to tell. */
  readonly appP99: number | undefined;
  /** The p99 the tuner keeps the application under (µs), once known. */
  readonly latencyTarget: number | undefined;
}

/** Throughput changes smaller than this count as noise. */
const NOISE = 0.05;
/** Each step moves bytes in flight or the pace by this factor down, or this one up. */
const BACKOFF = 0.75;
const GROW = 1.25;
/** Latency below this share of the target leaves room to copy harder. */
const HEADROOM = 0.7;
/** Windows to stay put when throughput is flat, before probing again. */
const HOLD_WINDOWS = 5;
/** Fewer application writes than this in a window say nothing about its p99. */
export const MIN_SAMPLES = 20;
/**
 * The pace never drops below `minCopyShare` of the best throughput seen, nor below this: the
 * copy always makes progress (DRBD's resync controller has a minimum rate too, c-min-rate).
 */
const MIN_PACE = 8 << 20;

/**
 * Picks the copy's chunk size, queue depth and pace from what each ~100 ms window measured. Each
 * knob moves one step at a time (like DRBD's plan-ahead controller, never in jumps):
 *
 * - the application's write latency comes first: above the target p99, a step less in flight,
 *   and at one operation in flight a step slower pace; comfortably below it, the reverse;
 * - the chunk size climbs towards better throughput (perturb and observe): a step in one
 *   direction, on while throughput improves, back when it falls, rest while it is flat.
 *   Smaller chunks are not a latency remedy here: they mean more operations, and on a busy
 *   machine each operation handed to the I/O thread pool is what the application waits behind.
 *
 * Pure: time and measurements come in as arguments, so tests drive it with a simulated disk.
 */
export class ChunkTuner {
  readonly #limits: TunerLimits;
  #chunk: number;
  #inFlight: number;
  #pace: number | undefined;
  #best = 0;
  #extentBytes: number | undefined;
  #target: number | undefined;
  #direction: 1 | -1 = 1;
  #lastThroughput: number | undefined;
  #hold = 0;

  constructor(limits: TunerLimits, initial: { chunkSize: number; inFlight: number }, latencyTargetMicros?: number) {
    this.#limits = limits;
    this.#chunk = clamp(initial.chunkSize, limits.minChunk, limits.maxChunk);
    this.#inFlight = clamp(initial.inFlight, this.#chunk, limits.maxInFlight);
    this.#target = latencyTargetMicros;
  }

  get chunkSize(): number {
    return this.#chunk;
  }

  get queueDepth(): number {
    return clamp(Math.round(this.#inFlight / this.#unit), 1, this.#limits.maxQueueDepth);
  }

  /** Bytes one operation moves: a chunk, or less when the extents are smaller. */
  get #unit(): number {
    return Math.min(this.#chunk, this.#extentBytes ?? this.#chunk);
  }

  /** The copy rate the tuner holds the copier to (undefined: none). */
  get pace(): number | undefined {
    return this.#pace;
  }

  /**
   * True when the tuner has nothing left to give: one operation in flight at its slowest pace.
   * An application still over the target then is slowed by something else, or by even that much
   * copying (a new measurement of the target tells which).
   */
  get atFloor(): boolean {
    return this.queueDepth === 1 && this.#pace !== undefined && this.#pace <= this.#floor;
  }

  /** The slowest pace: the copy always makes progress. */
  get #floor(): number {
    return Math.max(MIN_PACE, (this.#limits.minCopyShare ?? DEFAULT_MIN_COPY_SHARE) * this.#best);
  }

  /** The application's p99 target in µs (undefined: none yet). */
  get latencyTarget(): number | undefined {
    return this.#target;
  }

  /** A new target (a probe measured the application again); the knobs stay where they are. */
  setLatencyTarget(micros: number): void {
    this.#target = micros;
    this.#lastThroughput = undefined;
  }

  decide(w: TunerWindow): TuningDecision {
    if (w.meanExtentBytes !== undefined && w.meanExtentBytes > 0) this.#extentBytes = w.meanExtentBytes;
    const throughput = w.seconds > 0 ? w.bytesCopied / w.seconds : 0;
    this.#best = Math.max(this.#best, throughput);
    const p99 = w.app.count >= MIN_SAMPLES ? w.app.p99 : undefined;
    const decision = (reason: TuningReason): TuningDecision => ({
      chunkSize: this.#chunk,
      queueDepth: this.queueDepth,
      inFlight: this.#inFlight,
      pace: this.#pace,
      reason,
      throughput,
      appP99: p99,
      latencyTarget: this.#target,
    });

    if (this.#target !== undefined && p99 !== undefined && p99 > this.#target) {
      if (this.queueDepth > 1) {
        this.#inFlight = Math.max(this.#unit, Math.floor(this.#inFlight * BACKOFF));
      } else {
        const floor = this.#floor;
        this.#pace = Math.max(floor, (this.#pace ?? Math.max(throughput, floor)) * BACKOFF);
      }
      this.#lastThroughput = undefined; // what comes next is measured under new conditions
      return decision('app-latency');
    }
    if (w.bytesCopied === 0 && w.backlogBytes === 0) return decision('idle');
    if (w.rateLimited) return decision('rate-limited');

    const roomy = this.#target === undefined || p99 === undefined || p99 < HEADROOM * this.#target;
    if (roomy && this.#pace !== undefined) {
      const faster = this.#pace * GROW;
      this.#pace = faster > this.#best ? undefined : faster;
      this.#lastThroughput = undefined;
      return decision('headroom');
    }
    if (roomy && this.#inFlight < this.#limits.maxInFlight && this.queueDepth < this.#limits.maxQueueDepth) {
      this.#inFlight = Math.min(this.#limits.maxInFlight, Math.ceil(this.#inFlight * GROW));
      this.#lastThroughput = undefined;
      return decision('headroom');
    }
    // Under a pace, throughput says nothing about the chunk size.
    if (this.#pace !== undefined) return decision('hold');
    return decision(this.#climb(throughput));
  }

  /** One perturb-and-observe step of the chunk size. */
  #climb(throughput: number): TuningReason {
    const last = this.#lastThroughput;
    this.#lastThroughput = throughput;
    if (last === undefined) {
      this.#step();
      return 'climb';
    }
    if (throughput < last * (1 - NOISE)) {
      this.#direction = this.#direction === 1 ? -1 : 1;
      this.#step();
      return 'reverse';
    }
    if (throughput > last * (1 + NOISE)) {
      this.#step();
      return 'climb';
    }
    if (this.#hold++ < HOLD_WINDOWS) return 'hold';
    this.#hold = 0;
    this.#step();
    return 'climb';
  }

  /** Moves the chunk one power of two in the current direction, turning at the limits. */
  #step(): void {
    const { minChunk, maxChunk } = this.#limits;
    if ((this.#direction === 1 && this.#chunk >= maxChunk) || (this.#direction === -1 && this.#chunk <= minChunk)) {
      this.#direction = this.#direction === 1 ? -1 : 1;
    }
    const next = this.#direction === 1 ? this.#chunk * 2 : this.#chunk / 2;
    // Keep bytes in flight where they were: the chunk changes, the depth follows.
    this.#chunk = clamp(next, minChunk, maxChunk);
    this.#inFlight = Math.max(this.#inFlight, this.#chunk);
  }
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

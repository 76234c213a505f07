import type { DeviceSpec } from '../io/BlockDevice.js';
import type { CopyTask, CopyTaskResult } from '../workers/CopyTask.js';
import type { ExtentSource } from './ExtentSource.js';
import type { RateLimiter } from './RateLimiter.js';

/** A batch the pool finished: its extents and what the worker reported. */
export interface BatchOutcome {
  /** offset, length pairs, as handed to the worker. */
  readonly extents: readonly number[];
  readonly bytes: number;
  readonly result: CopyTaskResult;
}

/** Runs copy tasks: the worker pool, or a stand-in in tests. */
export interface TaskRunner {
  run(task: CopyTask): Promise<CopyTaskResult>;
}

/** What the scheduler copies, from where to where, and how hard. */
export interface CopySchedulerOptions {
  readonly pool: TaskRunner;
  /** Where extents are read from; may change between batches (a bulk copy's hole scan reads data otherwise). */
  source: DeviceSpec;
  readonly target: DeviceSpec;
  /** Largest extent handed to a worker. */
  chunkSize: number;
  /** Extents in flight at most, over all workers. */
  queueDepth: number;
  /** Extents per task sent to a worker. */
  batchExtents: number;
  /**
   * Each task is a stream: its `batchExtents` consecutive extents are copied one after another,
   * and `queueDepth` counts streams (each has one operation in flight) rather than extents.
   */
  readonly streams?: boolean;
  readonly detectZeroes: boolean;
  /** See `CopyTask.zeroGranule`. */
  readonly zeroGranule?: number;
  /** See `CopyTask.cancel`: handed to every task. */
  readonly cancel?: Int32Array;
  /** See `CopyTask.stopAtZero`; may change between batches. */
  stopAtZero?: boolean;
  /** See `CopyTask.stopAtData`; may change between batches. */
  stopAtData?: boolean;
  /**
   * Called before each batch is taken, to shape it (a bulk copy shapes it for what the stretch it
   * will take holds). Where it is given it bounds what is in flight, not `queueDepth` (which then
   * only shortens the last streams): false holds the next dispatch until a batch finishes.
   */
  readonly beforeTake?: () => boolean;
  readonly targetIsZero: boolean;
  readonly limiter: RateLimiter;
  /** Called on the coordinator thread as each batch finishes. */
  readonly onBatch: (outcome: BatchOutcome) => void;
  /** How long to wait for new work when the source has none but is not exhausted. */
  readonly idleWaitMs?: number;
  /**
   * After waiting idle, wait this much longer before taking work, so that the writes arriving
   * meanwhile are copied in a few coalesced batches instead of one tiny task each (QEMU's mirror
   * sleeps a whole 100 ms slice when it has caught up). 0: take at once.
   */
  readonly coalesceMs?: number;
  /** Called when the source had nothing to hand out (a mirror checks here whether it is in sync). */
  readonly onIdle?: () => void;
  /** @internal Tests of the stress test only: workers pause between each read and its write. */
  readonly preemptAfterRead?: boolean;
  /** Resolves when new work may have arrived (a bitmap's change signal), or after `ms`. */
  readonly waitForWork?: (ms: number) => Promise<unknown>;
}

const DEFAULT_IDLE_WAIT_MS = 50;

/**
 * The coordinator's dispatch loop: claims extents from an {@link ExtentSource}, groups them into
 * tasks, keeps at most `queueDepth` extents in flight, honours the rate limit, and reports each
 * finished batch. Chunk size, depth and batch size may change while it runs (the tuner does).
 */
export class CopyScheduler {
  readonly options: CopySchedulerOptions;
  #inFlightOperations = 0;
  #inFlightBytes = 0;
  #inFlight = new Set<Promise<void>>();
  #stopped = false;
  #paused = false;
  #wake: (() => void) | undefined;
  #rateLimited = false;
  #dispatched = { extents: 0, bytes: 0 };

  constructor(options: CopySchedulerOptions) {
    this.options = options;
  }

  get inFlightBytes(): number {
    return this.#inFlightBytes;
  }

  get inFlightOperations(): number {
    return this.#inFlightOperations;
  }

  /** Extents and bytes dispatched since the last call (the tuner's window): their mean size sets the depth. */
  takeDispatched(): { extents: number; bytes: number } {
    const d = this.#dispatched;
    this.#dispatched = { extents: 0, bytes: 0 };
    return d;
  }

  /** True if the rate limit made the loop wait since the last call (the tuner's window). */
  takeRateLimited(): boolean {
    const limited = this.#rateLimited;
    this.#rateLimited = false;
    return limited;
  }

  /** Wakes the loop: new work, a new speed, a resume. */
  notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Ends `run` once the batches in flight are done. */
  stop(): void {
    this.#stopped = true;
    this.notify();
  }

  /** Holds new dispatches (batches in flight finish); `resume` lets them go again. */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.notify();
  }

  /** Waits until every batch in flight has finished. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
  }

  /** Copies until the source is exhausted (or `stop`), then waits for the batches in flight. */
  async run(source: ExtentSource): Promise<void> {
    const o = this.options;
    while (!this.#stopped) {
      const full = o.beforeTake ? o.beforeTake() === false && this.#inFlight.size > 0 : this.#inFlightOperations >= o.queueDepth;
      if (this.#paused || full) {
        await this.#sleep();
        continue;
      }
      const delay = o.limiter.delay(performance.now());
      if (delay > 0) {
        this.#rateLimited = true;
        await this.#sleep(delay);
        continue;
      }
      const room = o.streams ? this.#streamExtents(source) : Math.min(o.batchExtents, o.queueDepth - this.#inFlightOperations, this.#extentsPerSlice());
      const extents: number[] = [];
      const count = source.take(extents, room, o.chunkSize);
      if (count === 0) {
        if (source.exhausted) {
          // A batch still in flight may give work back (a stream stopped part-way: see PhaseExtentSource.giveBack).
          if (this.#inFlight.size === 0) break;
          await Promise.race(this.#inFlight);
          continue;
        }
        o.onIdle?.();
        if (this.#stopped) break;
        const ms = o.idleWaitMs ?? DEFAULT_IDLE_WAIT_MS;
        await (o.waitForWork ? Promise.race([this.#sleep(ms), o.waitForWork(ms)]) : this.#sleep(ms));
        if (o.coalesceMs && !this.#stopped) await new Promise((resolve) => setTimeout(resolve, o.coalesceMs));
        continue;
      }
      this.#dispatch(extents, count);
    }
    await this.drain();
  }

  /**
   * A stream's length: `batchExtents`, shortened once what is left would not give every stream
   * that much (guided self-scheduling), so the streams of a phase end together rather than one
   * long stream running on alone while the others are done.
   */
  #streamExtents(source: ExtentSource): number {
    const { batchExtents, queueDepth, chunkSize } = this.options;
    if (source.remaining === undefined) return batchExtents;
    return Math.max(1, Math.min(batchExtents, Math.ceil(source.remaining / chunkSize / queueDepth)));
  }

  /** Under a rate limit, a task carries no more than one slice's quota (but at least one extent). */
  #extentsPerSlice(): number {
    const quota = this.options.limiter.sliceQuota;
    return Number.isFinite(quota) ? Math.max(1, Math.floor(quota / this.options.chunkSize)) : Number.POSITIVE_INFINITY;
  }

  #dispatch(extents: number[], count: number): void {
    const o = this.options;
    let bytes = 0;
    for (let i = 1; i < extents.length; i += 2) bytes += extents[i]!;
    o.limiter.account(bytes, performance.now());
    const operations = o.streams ? 1 : count;
    this.#inFlightOperations += operations;
    this.#inFlightBytes += bytes;
    this.#dispatched.extents += count;
    this.#dispatched.bytes += bytes;
    const task: CopyTask = {
      source: o.source,
      target: o.target,
      extents,
      detectZeroes: o.detectZeroes,
      targetIsZero: o.targetIsZero,
      ...(o.streams ? { sequential: true } : {}),
      ...(o.zeroGranule !== undefined ? { zeroGranule: o.zeroGranule } : {}),
      ...(o.cancel ? { cancel: o.cancel } : {}),
      ...(o.stopAtZero ? { stopAtZero: true } : {}),
      ...(o.stopAtData ? { stopAtData: true } : {}),
      ...(o.preemptAfterRead ? { preemptAfterRead: true } : {}),
    };
    const done = o.pool
      .run(task)
      .catch((err: unknown) => workerFailure(count, err))
      .then((result) => {
        this.#inFlightOperations -= operations;
        this.#inFlightBytes -= bytes;
        this.#inFlight.delete(done);
        o.onBatch({ extents, bytes, result });
        this.notify();
      });
    this.#inFlight.add(done);
  }

  #sleep(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => this.notify(), ms);
      this.#wake = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** A worker that died mid-task: every extent of its batch failed. */
function workerFailure(count: number, err: unknown): CopyTaskResult {
  const message = err instanceof Error ? err.message : String(err);
  return {
    bytesWritten: 0,
    bytesZero: 0,
    readMicros: new Float64Array(count).fill(NaN),
    writeMicros: new Float64Array(count).fill(NaN),
    failures: Array.from({ length: count }, (_, index) => ({ index, operation: 'read' as const, errno: 'EWORKER', message })),
  };
}

import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import type { DeviceSpec } from '../io/BlockDevice.js';
import { CopyScheduler, type BatchOutcome } from '../sched/CopyScheduler.js';
import { RateLimiter } from '../sched/RateLimiter.js';
import { batchExtentsFor } from '../sched/tuning.js';
import { WritebackPacer } from '../sched/WritebackPacer.js';
import type { CopyRunner } from '../workers/createCopyRunner.js';
import { GuardedDirtyExtents, type FailedExtent } from './GuardedDirtyExtents.js';
import type { RangeLocks } from './RangeLocks.js';
import type { UnsafeTestHooks } from './TrackedDevice.js';
import type { UnflushedCopies } from '../state/UnflushedCopies.js';
import { MirrorFirstPass, type FirstPassPlan, type FirstPassSummary } from './MirrorFirstPass.js';

/** Once caught up, new writes are collected this long before they are copied, in coalesced batches. */
const COALESCE_MS = 10;

export type { FailedExtent } from './GuardedDirtyExtents.js';

/** Bytes of backlog, or a function that says how many now. */
export type BacklogBound = number | (() => number);

export interface MirrorCopierOptions {
  /** Runs the copy tasks (the worker pool, or the coordinator's own devices for NBD). */
  readonly runner: CopyRunner;
  readonly source: DeviceSpec;
  readonly target: DeviceSpec;
  readonly bitmap: DirtyBitmap;
  readonly locks: RangeLocks;
  readonly chunkSize: number;
  readonly queueDepth: number;
  /** Threads the runner copies on (sets how many extents go in one task). */
  readonly workers: number;
  readonly speed: number;
  readonly testHooks?: UnsafeTestHooks;
  /** Called with the failed extents of a batch (their bits are set again: invariant 2). */
  readonly onFailures: (failed: readonly FailedExtent[]) => void;
  /** Flushes the target; paced during the copy so that the flushes before ready and pivot are short. */
  readonly flushTarget: () => Promise<void>;
  /** Bytes written between paced flushes (0: none). */
  readonly flushEvery: number;
  /** With a state directory: claimed ranges are kept here until the target has them durably. */
  readonly unflushed?: UnflushedCopies;
  /** A first pass on the bulk copy's engine, run before the copier's own loop (see MirrorFirstPass). */
  readonly firstPass?: FirstPassPlan;
  /** A flush of the first pass failed (what it copied is marked dirty again). */
  readonly onFlushError?: (err: unknown) => void;
}

/**
 * The copy half of a mirror job: drains the dirty bitmap through the worker pool, forever, until
 * stopped, after a first pass on the bulk copy's engine where the job has one. It knows nothing
 * of job states; the job asks it to pause, resume, and tell it when nothing is dirty and nothing
 * is in flight.
 */
export class MirrorCopier {
  #bytesCopied = 0;
  readonly #limiter: RateLimiter;
  /** The user's speed limit (0: none) and the tuner's pace (undefined: none); the copier keeps to the lower. */
  #speed: number;
  #pace: number | undefined;
  readonly #o: MirrorCopierOptions;
  readonly #pool: CopyRunner;
  readonly #scheduler: CopyScheduler;
  readonly #extents: GuardedDirtyExtents;
  readonly #pacer: WritebackPacer;
  #running: Promise<void> | undefined;
  readonly #firstPass: MirrorFirstPass | undefined;
  /** The first pass's run, once started (it never rejects). */
  #firstPassRun: Promise<void> | undefined;
  /** Callers waiting for the backlog (dirty and in flight) to fall to at most so many bytes. */
  #backlogWaiters: Array<{ bytes: BacklogBound; resolve: () => void }> = [];

  constructor(options: MirrorCopierOptions) {
    this.#o = options;
    this.#speed = options.speed;
    this.#limiter = new RateLimiter(options.speed);
    this.#pacer = new WritebackPacer(options.flushTarget, options.flushEvery);
    this.#pool = options.runner;
    this.#firstPass = options.firstPass
      ? new MirrorFirstPass({
          ...options.firstPass,
          sourceSpec: options.source,
          targetSpec: options.target,
          runner: options.runner,
          bitmap: options.bitmap,
          locks: options.locks,
          unflushed: options.unflushed,
          onFailures: options.onFailures,
          onFlushError: (err) => options.onFlushError?.(err),
          onBatch: () => this.#checkBacklog(),
        })
      : undefined;
    this.#extents = new GuardedDirtyExtents(options.bitmap, options.locks, options.testHooks, options.unflushed);
    this.#scheduler = new CopyScheduler({
      pool: this.#pool,
      source: options.source,
      target: options.target,
      chunkSize: options.chunkSize,
      queueDepth: options.queueDepth,
      batchExtents: batchExtentsFor(options.queueDepth, options.workers),
      detectZeroes: true,
      // An extent may have been copied before, so a zero chunk must be checked against the target.
      targetIsZero: false,
      limiter: this.#limiter,
      onBatch: (outcome) => this.#onBatch(outcome),
      onIdle: () => this.#checkBacklog(),
      coalesceMs: COALESCE_MS,
      // The hooks that race a write against a copy in flight widen the copy's window for it.
      preemptAfterRead: options.testHooks?.skipWriteBlockingWait === true || options.testHooks?.clearAfterRead === true,
      waitForWork: (ms) => (options.bitmap.count() > 0 ? new Promise((r) => setTimeout(r, ms)) : options.bitmap.changed(ms)),
    });
  }

  /** Bytes copied to the target so far. */
  get bytesCopied(): number {
    return this.#bytesCopied + (this.#firstPass?.bytesCopied ?? 0);
  }

  get inFlightBytes(): number {
    return this.#scheduler.inFlightBytes + (this.#firstPass?.inFlightBytes ?? 0);
  }

  get scheduler(): CopyScheduler {
    return this.#scheduler;
  }

  /**
   * Nothing dirty and nothing in flight, and no first pass running: until its last flush has
   * succeeded, what it copied may have to be marked dirty again.
   */
  get clean(): boolean {
    return this.#o.bitmap.count() === 0 && this.#scheduler.inFlightOperations === 0 && !this.firstPassRunning;
  }

  start(): void {
    this.#running ??= this.#run();
  }

  async #run(): Promise<void> {
    if (this.#firstPass) {
      this.#firstPassRun = this.#firstPass.run();
      await this.#firstPassRun;
      this.#checkBacklog();
    }
    await this.#scheduler.run(this.#extents);
  }

  /** True while a first pass runs (its copies are not the copier's: the tuner leaves them out). */
  get firstPassRunning(): boolean {
    return this.#firstPass?.running === true;
  }

  /** What the first pass did, once it has ended (undefined: there was none, or it still runs). */
  get firstPass(): FirstPassSummary | undefined {
    return this.#firstPass?.summary;
  }

  /** Ends the first pass, if one runs: the copier's own loop copies what it leaves dirty. */
  endFirstPass(reason: string): void {
    this.#firstPass?.end(reason);
  }

  /** New dirty bits, a new speed: look again now. */
  notify(): void {
    this.#scheduler.notify();
  }

  /** Stops dispatching; resolves once no copy I/O is in flight. */
  async pause(): Promise<void> {
    this.#scheduler.pause();
    this.endFirstPass('the job was paused');
    await this.#firstPassRun;
    await this.#scheduler.drain();
  }

  resume(): void {
    this.#scheduler.resume();
  }

  /** The user's speed limit, bytes per second (0: none). */
  get speed(): number {
    return this.#speed;
  }

  setSpeed(bytesPerSecond: number): void {
    this.#speed = bytesPerSecond;
    this.#applyLimit();
  }

  /** The tuner's pace, bytes per second (undefined: none): a second ceiling under the user's. */
  setPace(bytesPerSecond: number | undefined): void {
    if (bytesPerSecond === this.#pace) return;
    this.#pace = bytesPerSecond;
    this.#applyLimit();
  }

  /** True when the user's speed limit, not the tuner's pace, is the one the copier keeps to. */
  get limitedByUser(): boolean {
    return this.#speed > 0 && (this.#pace === undefined || this.#speed <= this.#pace);
  }

  #applyLimit(): void {
    const lowest = Math.min(this.#speed > 0 ? this.#speed : Number.POSITIVE_INFINITY, this.#pace ?? Number.POSITIVE_INFINITY);
    this.#limiter.setSpeed(Number.isFinite(lowest) ? Math.floor(lowest) : 0);
    // The pass has no limit of its own: any limit hands over to the copier, which keeps to it.
    if (Number.isFinite(lowest)) this.endFirstPass(this.limitedByUser ? 'a speed limit was set' : 'the controller paced the copy');
    this.#scheduler.notify();
  }

  /** Resolves the next time nothing is dirty and nothing is in flight (at once if so now). */
  whenClean(): Promise<void> {
    return this.whenBacklogAtMost(0);
  }

  /** Bytes dirty or in flight (the first pass's too). */
  get backlogBytes(): number {
    return this.#o.bitmap.dirtyBytes() + this.inFlightBytes;
  }

  /**
   * Resolves the next time the backlog is at most `bytes` (0: clean), once any first pass has
   * ended — at once if so now. A function is asked again at each check (a bound that follows the
   * copy rate, which the job's first wait would otherwise fix at its start, at a single granule).
   */
  whenBacklogAtMost(bytes: BacklogBound): Promise<void> {
    if (this.#backlogAtMost(bytes)) return Promise.resolve();
    return new Promise((resolve) => {
      this.#backlogWaiters.push({ bytes, resolve });
      this.#scheduler.notify();
    });
  }

  /** Stops for good: waits for the batches in flight, then stops the workers. */
  async stop(): Promise<void> {
    this.#scheduler.stop();
    this.endFirstPass('the job stopped');
    await this.#running;
    await this.#firstPassRun;
    await this.#firstPass?.close();
    await this.#scheduler.drain();
    await this.#pool.close();
    // A paced flush that failed is not an error here: the job's own final flush decides.
    await this.#pacer.settle().catch(() => undefined);
  }

  #onBatch(outcome: BatchOutcome): void {
    const { failed, uncopiedBytes } = this.#extents.finish(outcome);
    this.#bytesCopied += outcome.bytes - uncopiedBytes;
    this.#pacer.noteWritten(outcome.result.bytesWritten);
    if (failed.length) this.#o.onFailures(failed);
    this.#checkBacklog();
  }

  /** A running first pass holds every waiter: its last flush decides whether what it copied stays copied. */
  #backlogAtMost(bound: BacklogBound): boolean {
    if (this.firstPassRunning) return false;
    const bytes = typeof bound === 'number' ? bound : bound();
    return bytes === 0 ? this.clean : this.backlogBytes <= bytes;
  }

  #checkBacklog(): void {
    if (this.#backlogWaiters.length === 0) return;
    const still: Array<{ bytes: BacklogBound; resolve: () => void }> = [];
    for (const w of this.#backlogWaiters) {
      if (this.#backlogAtMost(w.bytes)) w.resolve();
      else still.push(w);
    }
    this.#backlogWaiters = still;
  }
}

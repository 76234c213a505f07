import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { ErrorCode, IoError, JobError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import type { TuningDecision } from '../sched/ChunkTuner.js';
import { resolveErrorAction, type ErrorAction, type ErrorPolicy, type IoStatus } from './errorPolicy.js';
import { JOB_VERBS, JobStatus, canTransition, isActive, type JobStatusValue, type JobVerb } from './JobStatus.js';
import type { FailedExtent, MirrorCopier } from './MirrorCopier.js';
import type { FirstPassSummary } from './MirrorFirstPass.js';
import {
  MirrorController,
  type ConvergenceEvent,
  type MirrorControllerOptions,
  type ReadyLostEvent,
} from './MirrorController.js';
import type { RangeLocks } from './RangeLocks.js';
import type { CopyMode, TrackedDevice, UnsafeTestHooks } from './TrackedDevice.js';
import type { SharedTracker } from './TrackedWriter.js';
import type { WriterGate } from './WriterGate.js';
import type { JobStateStore } from '../state/JobStateStore.js';
import type { JobPhase } from '../state/JobStateFile.js';

/** A mirror job's progress. Sizes in bytes, rates in bytes per second. */
export interface MirrorProgress {
  /** Total work so far, as in QEMU: grows as new writes dirty clean extents. */
  readonly len: number;
  /** Work done; `offset === len` when in sync. */
  readonly offset: number;
  readonly dirtyBytes: number;
  readonly inFlightBytes: number;
  readonly bytesCopied: number;
  readonly copyRate: number;
  /** Bytes newly dirtied per second. */
  readonly dirtyRate: number;
  /** Seconds to ready at the current rates (Infinity when the backlog is not shrinking). */
  readonly etaToReady: number;
  /** True when nothing is dirty and nothing is in flight. */
  readonly synced: boolean;
}

/** A job proves it is ready with its writers held once its backlog is about this much copying... */
const READY_CHECK_SECONDS = 0.02;
/** ...and never more than this many bytes. */
const READY_CHECK_MAX_BACKLOG = 4 << 20;

/** How a job ended. */
export type JobOutcome =
  | { readonly status: 'completed'; readonly pivoted: true; readonly len: number; readonly offset: number }
  | { readonly status: 'cancelled'; readonly consistent: boolean; readonly len: number; readonly offset: number }
  | { readonly status: 'failed'; readonly error: Error; readonly len: number; readonly offset: number };

/** The payload of a job's `error` event. */
export interface JobErrorEvent {
  readonly operation: 'read' | 'write' | 'flush';
  readonly action: ErrorAction;
  readonly errno: string;
  readonly offset: number | undefined;
  readonly length: number | undefined;
  readonly message: string;
}

/** Events a MirrorJob emits, with their payloads. */
export interface MirrorJobEvents {
  'status-change': [{ status: JobStatusValue; previous: JobStatusValue }];
  ready: [{ len: number; offset: number }];
  completed: [{ len: number; offset: number }];
  cancelled: [{ len: number; offset: number; consistent: boolean }];
  error: [JobErrorEvent];
  /** The writer outpaces the copier (or no longer does), and what the job did about it. */
  convergence: [ConvergenceEvent];
  /** A ready job's backlog grew past a second of copying: it is running again. */
  'ready-lost': [ReadyLostEvent];
  /** Debug: each chunk-size and depth decision of the tuner. */
  tuning: [TuningDecision];
}

/** What a job is made of; `startMirror` puts it together. */
export interface MirrorJobParts {
  readonly id: string;
  readonly size: number;
  readonly sourceSpec: DeviceSpec;
  readonly targetSpec: DeviceSpec;
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  /** The devices the job opened itself, closed by `close` (not those it was given). */
  readonly ownedDevices: readonly BlockDevice[];
  readonly bitmap: DirtyBitmap;
  readonly gate: WriterGate;
  readonly locks: RangeLocks;
  readonly device: TrackedDevice;
  readonly copier: MirrorCopier;
  readonly onSourceError: ErrorPolicy;
  readonly onTargetError: ErrorPolicy;
  readonly autoFinalize: boolean;
  readonly autoDismiss: boolean;
  readonly testHooks?: UnsafeTestHooks;
  /** With a state directory: where the job records its phase, bitmap and activity log. */
  readonly state?: JobStateStore;
  /** How the control loop tunes and converges (everything but the parts it is given here). */
  readonly control: Omit<MirrorControllerOptions, 'copier' | 'gate'>;
}

/**
 * A live mirror: copies the source to the target while the application writes through
 * `job.device`, reaches `ready` when the two are in sync, and ends with a pivot (`complete`) or a
 * consistent copy (`cancel` once ready). States and verbs follow QEMU's block jobs.
 */
export class MirrorJob extends EventEmitter<MirrorJobEvents> {
  readonly id: string;
  /** The write interceptor: do the application's I/O through it while the job runs. */
  readonly device: TrackedDevice;
  /** Settles once the job has concluded. */
  readonly result: Promise<JobOutcome>;
  readonly #p: MirrorJobParts;
  #status: JobStatusValue = JobStatus.CREATED;
  #ioStatus: IoStatus = 'ok';
  #driving = false;
  #finishing = false;
  #outcome: JobOutcome | undefined;
  #settle!: (o: JobOutcome) => void;
  #finalizeRequested: (() => void) | undefined;
  #resumeWaiters: Array<() => void> = [];
  #pauseWaiters: Array<() => void> = [];
  /** Quiesces held from outside (transactions, checkpoints): the job's own gate toggles leave writers held meanwhile. */
  #holds = 0;
  readonly #controller: MirrorController;

  constructor(parts: MirrorJobParts) {
    super();
    this.#p = parts;
    this.id = parts.id;
    this.device = parts.device;
    this.result = new Promise((resolve) => (this.#settle = resolve));
    this.#controller = new MirrorController(this.#controlledView(), { ...parts.control, copier: parts.copier, gate: parts.gate });
  }

  get status(): JobStatusValue {
    return this.#status;
  }

  /** 'failed' or 'nospace' while stopped by an error policy, else 'ok'. */
  get ioStatus(): IoStatus {
    return this.#ioStatus;
  }

  get copyMode(): CopyMode {
    return this.device.copyMode;
  }

  /** Current speed limit in bytes per second (0: none). */
  get speed(): number {
    return this.#p.copier.speed;
  }

  get size(): number {
    return this.#p.size;
  }

  /** True when the job is paused by the user or stopped by an error. */
  get paused(): boolean {
    return this.#status === JobStatus.PAUSED || this.#status === JobStatus.STANDBY;
  }

  /** True while the job moves data (not paused, not concluded). */
  get busy(): boolean {
    return (this.#status === JobStatus.RUNNING || this.#status === JobStatus.READY) && !this.#p.copier.clean;
  }

  /** @internal Starts copying; `startMirror` calls this. */
  start(): void {
    this.#controller.start();
    this.#p.copier.start();
    this.#transition(JobStatus.RUNNING);
    void this.#driveToReady();
  }

  progress(): MirrorProgress {
    const { copier, bitmap } = this.#p;
    const dirtyBytes = bitmap.dirtyBytes();
    const inFlightBytes = copier.inFlightBytes;
    const offset = copier.bytesCopied;
    const len = offset + dirtyBytes + inFlightBytes;
    const copyRate = this.#controller.state?.cleanRate ?? 0;
    const dirtyRate = this.#controller.state?.dirtyRate ?? 0;
    const backlog = dirtyBytes + inFlightBytes;
    const net = copyRate - dirtyRate;
    return {
      len,
      offset,
      dirtyBytes,
      inFlightBytes,
      bytesCopied: offset,
      copyRate,
      dirtyRate,
      etaToReady: backlog === 0 ? 0 : net > 0 ? backlog / net : Number.POSITIVE_INFINITY,
      synced: backlog === 0,
    };
  }

  /**
   * A handle for writers on other threads (post it to them; open it there with
   * `TrackedWriter.open`). Their writes are tracked as background writes in either copy mode.
   */
  tracker(): SharedTracker {
    if (this.#p.state) {
      throw new JobError(ErrorCode.JOB_STATE, `job ${this.id} keeps state on disk: its writes go through job.device, on this thread, where the activity log sees them`);
    }
    this.device.disallowClearingCovered();
    return {
      size: this.#p.size,
      source: this.#p.sourceSpec,
      target: this.#p.targetSpec,
      bitmap: this.#p.bitmap.share(),
      gate: this.#p.gate.share(),
      ...(this.#p.testHooks?.markBeforeWrite ? { testHooks: { markBeforeWrite: true } } : {}),
    };
  }

  /** Pivots to the target once in sync: writers are quiesced, the rest copied, the target flushed. */
  async complete(): Promise<JobOutcome> {
    this.#assertVerb('complete');
    return this.#finish('complete');
  }

  /**
   * Cancels the job. Once ready (and without `force`) the rest is copied first and the target is
   * a consistent copy as of the cancel; otherwise the job stops at once and the target is not one.
   */
  async cancel(options: { force?: boolean } = {}): Promise<JobOutcome> {
    this.#assertVerb('cancel');
    if (this.#status === JobStatus.STANDBY && !options.force) this.resume();
    if (this.#status === JobStatus.READY && !options.force) return this.#finish('cancel');
    await this.#abort(undefined);
    return this.result;
  }

  /** Holds the job: no copy I/O once the operations in flight are done. Writes are still tracked. */
  async pause(): Promise<void> {
    this.#assertVerb('pause');
    await this.#enterPause();
  }

  resume(): void {
    this.#assertVerb('resume');
    this.#ioStatus = 'ok';
    this.#transition(this.#status === JobStatus.STANDBY ? JobStatus.READY : JobStatus.RUNNING);
    this.#p.copier.resume();
    const waiters = this.#resumeWaiters;
    this.#resumeWaiters = [];
    for (const w of waiters) w();
  }

  /** Changes the copy rate limit at once, also while the copier waits on the old one. 0: none. */
  setSpeed(bytesPerSecond: number): void {
    this.#assertVerb('setSpeed');
    if (!Number.isSafeInteger(bytesPerSecond) || bytesPerSecond < 0) {
      throw new JobError(ErrorCode.INVALID_OPTION, `speed must be a whole number of bytes per second, not ${bytesPerSecond}`);
    }
    this.#p.copier.setSpeed(bytesPerSecond);
  }

  /** Switches from background to write-blocking copying (the other way is not allowed, as in QEMU). */
  async changeCopyMode(mode: CopyMode): Promise<void> {
    this.#assertVerb('changeCopyMode');
    if (mode === this.device.copyMode) return;
    if (mode !== 'write-blocking') {
      throw new JobError(ErrorCode.JOB_STATE, `job ${this.id}: copy mode can only change from background to write-blocking`);
    }
    // No background write may still be in flight when write-blocking writes start taking locks.
    this.#p.copier.endFirstPass('the copy mode changed to write-blocking');
    await this.#p.gate.close();
    this.device.setCopyMode(mode);
    this.#openGate();
  }

  /** With `autoFinalize: false`, a completed job waits in `pending` until this is called. */
  finalize(): void {
    this.#assertVerb('finalize');
    this.#finalizeRequested?.();
  }

  /** With `autoDismiss: false`, a concluded job stays queryable until this is called. */
  dismiss(): void {
    this.#assertVerb('dismiss');
    this.#transition(JobStatus.NULL);
  }

  /**
   * Releases the devices the job opened once it has concluded; `job.device` is unusable afterwards
   * unless the job was given its devices (`sourceDevice`, `targetDevice`), which stay open.
   */
  async close(): Promise<void> {
    if (!this.#outcome) throw new JobError(ErrorCode.JOB_STATE, `job ${this.id} is still ${this.#status}; cancel or complete it first`);
    try {
      await this.#p.state?.close();
    } finally {
      await Promise.all(this.#p.ownedDevices.map((d) => d.close()));
    }
  }

  /** @internal Quiesces this job's writers (transactions quiesce several jobs together). Pair with {@link unquiesce}. */
  quiesce(): Promise<void> {
    this.#holds++;
    return this.#p.gate.close();
  }

  /** @internal Lets this job's writers go again, once no other quiesce holds them. */
  unquiesce(): void {
    this.#holds = Math.max(0, this.#holds - 1);
    this.#openGate();
  }

  /** Opens the writer gate unless a quiesce (a transaction, a checkpoint) still holds it. */
  #openGate(): void {
    if (this.#holds === 0) this.#p.gate.open();
  }

  /**
   * @internal With writers quiesced: copies what is left and (unless `flush` is false: the caller
   * makes it durable itself, as a replica's checkpoint does) flushes the target, so that the
   * target holds every write acknowledged before the quiesce. Rejects if that takes longer than
   * `timeoutMs` (a target that went away), or the job ends meanwhile.
   */
  async drainQuiesced(timeoutMs: number, options: { flush?: boolean } = {}): Promise<void> {
    const { copier, target } = this.#p;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new JobError(ErrorCode.JOB_STATE, `job ${this.id}: the target did not take the backlog within ${timeoutMs} ms`)), timeoutMs);
    });
    const ended = this.result.then(() => {
      throw new JobError(ErrorCode.JOB_STATE, `job ${this.id} ended during a checkpoint`);
    });
    try {
      for (;;) {
        await Promise.race([copier.whenClean(), late, ended]);
        if (options.flush !== false) await Promise.race([target.flush(), late, ended]);
        if (copier.clean) return;
      }
    } finally {
      clearTimeout(timer);
      ended.catch(() => {});
    }
  }

  /**
   * @internal Marks a range dirty again: the target lost it (writes a lost connection had not
   * flushed). The copier copies it again.
   */
  markDirty(offset: number, length: number): void {
    this.#p.bitmap.mark(offset, length);
    this.#p.copier.notify();
  }

  /** @internal Called by the copier with failed extents (already marked dirty again). */
  handleCopyFailures(failed: readonly FailedExtent[]): void {
    for (const { offset, length, failure } of failed) {
      const side = failure.operation === 'read' ? 'source' : 'target';
      this.#handleError(side, { operation: failure.operation, errno: failure.errno, offset, length, message: failure.message });
    }
  }

  /** @internal Called by the interceptor when a write-blocking write missed the target. */
  handleTargetWriteError(err: IoError): void {
    this.#handleError('target', { operation: 'write', errno: err.errno, offset: err.offset, length: err.length, message: err.message });
  }

  /** @internal New dirty bits: wake the copier. */
  notifyDirty(): void {
    this.#p.copier.notify();
  }

  #handleError(side: 'source' | 'target', e: Omit<JobErrorEvent, 'action'>): void {
    if (this.#outcome) return;
    const policy = side === 'source' ? this.#p.onSourceError : this.#p.onTargetError;
    let action = resolveErrorAction(policy, e.errno);
    // Finishing cannot stop half-way with writers quiesced: a stop there fails the job instead.
    if (action === 'stop' && this.#finishing) action = 'report';
    // EventEmitter throws on an 'error' nobody listens to; the outcome reports failures anyway.
    if (this.listenerCount('error') > 0) this.emit('error', { ...e, action });
    if (action === 'report') {
      void this.#abort(new IoError(e.errno, e.operation, e.message, { offset: e.offset, length: e.length }));
    } else if (action === 'stop' && isActive(this.#status) && !this.paused) {
      this.#ioStatus = e.errno === 'ENOSPC' ? 'nospace' : 'failed';
      void this.#enterPause();
    }
  }

  async #enterPause(): Promise<void> {
    const ready = this.#status === JobStatus.READY;
    if (this.#status === JobStatus.RUNNING || ready) this.#transition(ready ? JobStatus.STANDBY : JobStatus.PAUSED);
    for (const w of this.#pauseWaiters.splice(0)) w();
    await this.#p.copier.pause();
  }

  #waitForResume(): Promise<void> {
    if (!this.paused) return Promise.resolve();
    return new Promise((resolve) => this.#resumeWaiters.push(resolve));
  }

  /**
   * Copies until in sync, flushes the target, and goes to ready. Runs again when a ready job
   * drops back to running (its backlog grew past a second of copying).
   */
  async #driveToReady(): Promise<void> {
    if (this.#driving) return;
    this.#driving = true;
    try {
      await this.#untilReady();
    } finally {
      this.#driving = false;
    }
  }

  async #untilReady(): Promise<void> {
    const { copier, target, gate } = this.#p;
    while (!this.#outcome && this.#status !== JobStatus.READY) {
      // Asked again at each check: fixed now, before any rate is known, it would be one granule.
      await copier.whenBacklogAtMost(() => this.#readyCheckBacklog());
      if (this.#outcome || this.#finishing) return;
      if (this.paused) {
        await this.#waitForResume();
        continue;
      }
      // Most of the target's dirty pages go to disk while writers still run, so the proof is short.
      if (!(await this.#flushTarget())) continue;
      // Ready means proven (invariant 4): with writers held for a moment, what is left is copied,
      // the target flushed, and nothing is dirty or in flight. Under a steady writer the bitmap is
      // rarely empty on its own, so the job does not wait for luck.
      await gate.close();
      try {
        await Promise.race([copier.whenClean(), this.#pausedOrDone()]);
        if (this.#outcome || this.paused || !(await this.#flushTarget())) continue;
        if (copier.clean && this.#status === JobStatus.RUNNING) {
          this.#transition(JobStatus.READY);
          const p = this.progress();
          this.emit('ready', { len: p.len, offset: p.offset });
        }
      } finally {
        this.#openGate();
      }
    }
  }

  /** Flushes the target; a failure goes to the target's error policy. True when it worked. */
  async #flushTarget(): Promise<boolean> {
    try {
      await this.#p.target.flush();
      return true;
    } catch (err) {
      this.handleTargetFlushError(err);
      return false;
    }
  }

  /**
   * The backlog small enough to finish with writers held: about 20 ms of copying at the current
   * rate (at least a granule, at most 4 MiB), so the application barely notices the hold.
   */
  #readyCheckBacklog(): number {
    const rate = this.#controller.state?.cleanRate ?? 0;
    const limit = this.speed > 0 ? Math.min(this.speed, rate || this.speed) : rate;
    return Math.min(READY_CHECK_MAX_BACKLOG, Math.max(this.#p.bitmap.granularity, limit * READY_CHECK_SECONDS));
  }

  /** Resolves when the job pauses (a stop policy, say) or concludes. */
  #pausedOrDone(): Promise<unknown> {
    return Promise.race([this.result, new Promise<void>((resolve) => this.#pauseWaiters.push(resolve))]);
  }

  /** What the control loop sees of this job. */
  #controlledView(): ConstructorParameters<typeof MirrorController>[0] {
    const job = this; // the getters below read the job's live state
    return {
      get status() {
        return job.status;
      },
      get copyMode() {
        return job.copyMode;
      },
      backlog: () => {
        const p = this.progress();
        return { backlogBytes: p.dirtyBytes + p.inFlightBytes, copiedBytes: p.bytesCopied };
      },
      onTuning: (d) => this.listenerCount('tuning') > 0 && this.emit('tuning', d),
      onConvergence: (e) => this.emit('convergence', e),
      switchToWriteBlocking: () => this.changeCopyMode('write-blocking').catch(() => undefined),
      dropReady: (e) => {
        if (this.#status !== JobStatus.READY || this.#finishing) return;
        this.#transition(JobStatus.RUNNING);
        this.emit('ready-lost', e);
        void this.#driveToReady();
      },
    };
  }

  /** @internal The interceptor's write latencies, for the tuner. */
  recordAppLatency(micros: number): void {
    this.#controller.appLatency.record(micros);
  }

  /** @internal A flush of the target failed (the job's own, or the first pass's): the target's error policy decides. */
  handleTargetFlushError(err: unknown): void {
    const io = err instanceof IoError ? err : undefined;
    this.#handleError('target', { operation: 'flush', errno: io?.errno ?? 'EIO', offset: undefined, length: undefined, message: String(err) });
  }

  /**
   * How the first pass copied, once it has ended: a full mirror between two files, in background
   * mode and without a speed limit, starts on the bulk copy's engine (its measured I/O plan) at
   * full speed, until the controller first slows the copy. Undefined when there was none, or while
   * it runs.
   */
  get firstPass(): FirstPassSummary | undefined {
    return this.#p.copier.firstPass;
  }

  /**
   * The end of a job in sync: quiesce writers, copy what is left, flush, re-check under quiesce
   * (invariant 4), then pivot (complete) or not (cancel), and conclude.
   */
  async #finish(kind: 'complete' | 'cancel'): Promise<JobOutcome> {
    if (this.#finishing) return this.result;
    this.#finishing = true;
    const { copier, gate, target } = this.#p;
    this.#transition(JobStatus.WAITING);
    this.#transition(JobStatus.PENDING);
    if (!this.#p.autoFinalize) await new Promise<void>((resolve) => (this.#finalizeRequested = resolve));
    if (this.#outcome) return this.result;
    if (kind === 'complete' && !(await this.#recordPhase('completing'))) return this.result;
    // Writers stay out from here on, so nothing new can be dirtied; only a failed copy re-marks.
    await gate.close();
    for (;;) {
      await Promise.race([copier.whenClean(), this.result]);
      if (this.#outcome) {
        this.#openGate();
        return this.result;
      }
      try {
        await target.flush();
      } catch (err) {
        this.#openGate();
        const io = err instanceof IoError ? err : undefined;
        await this.#abort(new IoError(io?.errno ?? 'EIO', 'flush', `final flush of the target failed: ${String(err)}`, { cause: err }));
        return this.result;
      }
      if (copier.clean) break;
    }
    // The directory says "target current" before any write can reach the target alone; if that
    // cannot be written, the source stays current and the job fails.
    if (kind === 'complete' && !(await this.#recordPhase('pivoted'))) {
      this.#openGate();
      return this.result;
    }
    if (kind === 'complete') gate.pivot();
    gate.stopTracking();
    this.#openGate();
    await copier.stop();
    const p = this.progress();
    this.#conclude(
      kind === 'complete'
        ? { status: 'completed', pivoted: true, len: p.len, offset: p.offset }
        : { status: 'cancelled', consistent: true, len: p.len, offset: p.offset },
    );
    if (kind === 'complete') this.emit('completed', { len: p.len, offset: p.offset });
    else this.emit('cancelled', { len: p.len, offset: p.offset, consistent: true });
    return this.result;
  }

  /** Stops at once: a failure (`error`) or a cancel before ready / forced. */
  async #abort(error: Error | undefined): Promise<void> {
    if (this.#outcome || this.#status === JobStatus.ABORTING) return;
    this.#transition(JobStatus.ABORTING);
    this.#p.gate.stopTracking();
    this.#openGate();
    await this.#p.copier.stop();
    const p = this.progress();
    if (error) {
      this.#conclude({ status: 'failed', error: new JobError(ErrorCode.JOB_FAILED, `job ${this.id} failed: ${error.message}`, { cause: error }), len: p.len, offset: p.offset });
    } else {
      this.#conclude({ status: 'cancelled', consistent: false, len: p.len, offset: p.offset });
      this.emit('cancelled', { len: p.len, offset: p.offset, consistent: false });
    }
  }

  /**
   * Records a phase in the state directory (if any) and waits until it is durable. A failure
   * fails the job: the directory may no longer say where the job is. False then.
   */
  async #recordPhase(phase: JobPhase): Promise<boolean> {
    if (!this.#p.state) return true;
    try {
      await this.#p.state.setPhase(phase);
      return true;
    } catch (err) {
      await this.#abort(new JobError(ErrorCode.JOB_FAILED, `cannot record phase ${phase} in ${this.#p.state.dir}: ${String(err)}`, { cause: err }));
      return false;
    }
  }

  /** @internal A background checkpoint failed: the state directory no longer covers every write. */
  handleStateError(err: unknown): void {
    if (this.#outcome) return;
    void this.#abort(new JobError(ErrorCode.JOB_FAILED, `cannot save the job's state in ${this.#p.state?.dir}: ${String(err)}`, { cause: err }));
  }

  #conclude(outcome: JobOutcome): void {
    if (this.#p.state && outcome.status !== 'completed') {
      const consistent = outcome.status === 'cancelled' && outcome.consistent;
      this.#p.state.setPhase('stopped', consistent).catch(() => undefined);
    }
    this.#controller.stop();
    this.#outcome = outcome;
    this.#transition(JobStatus.CONCLUDED);
    this.#settle(outcome);
    const waiters = this.#resumeWaiters;
    this.#resumeWaiters = [];
    for (const w of waiters) w();
    if (this.#p.autoDismiss) this.#transition(JobStatus.NULL);
  }

  #assertVerb(verb: JobVerb): void {
    const allowed: readonly JobStatusValue[] = JOB_VERBS[verb];
    if (!allowed.includes(this.#status)) {
      throw new JobError(ErrorCode.JOB_STATE, `job ${this.id} cannot ${verb} while ${this.#status} (allowed: ${allowed.join(', ')})`);
    }
  }

  #transition(to: JobStatusValue): void {
    const previous = this.#status;
    if (previous === to) return;
    if (!canTransition(previous, to)) throw new Error(`internal: job ${this.id} cannot go from ${previous} to ${to}`);
    this.#status = to;
    // Ready, and back to copying when a ready job falls behind: worth knowing after a crash, not worth waiting for.
    if (to === JobStatus.READY || (to === JobStatus.RUNNING && previous === JobStatus.READY)) {
      this.#p.state?.setPhase(to === JobStatus.READY ? 'ready' : 'copying').catch((err: unknown) => this.handleStateError(err));
    }
    this.emit('status-change', { status: to, previous });
  }
}

import { performance } from 'node:perf_hooks';
import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { DirtyRangeCursor } from '../bitmap/DirtyRangeCursor.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { DeviceWrapper } from '../io/DeviceWrapper.js';
import type { BatchOutcome } from '../sched/CopyScheduler.js';
import type { PhaseExtentSource } from '../sched/ExtentSource.js';
import { IoPlanChooser, type IoPlanChoice } from '../sched/IoPlanChooser.js';
import type { CopyTuning } from '../sched/tuning.js';
import type { CopyRunner } from '../workers/createCopyRunner.js';
import type { UnflushedCopies } from '../state/UnflushedCopies.js';
import { BulkCopy } from './BulkCopy.js';
import { GuardedDirtyExtents, type FailedExtent } from './GuardedDirtyExtents.js';
import { describeChoice, type IoModeCandidates } from './ioModeCandidates.js';
import type { RangeLocks } from './RangeLocks.js';

/** What a mirror's first pass did: how it copied, how much, and what ended it early, if anything did. */
export interface FirstPassSummary {
  /** How the source was read and the target written, and why (as a bulk copy's `io`). */
  readonly io: IoPlanChoice;
  readonly bytesCopied: number;
  readonly seconds: number;
  /** Why the pass handed over to the mirror's own copier before the end of the image (undefined: it reached the end). */
  readonly endedBy: string | undefined;
}

/** How a mirror job's first pass copies (the mirror's copier adds what they share). */
export interface FirstPassPlan {
  /** The coordinator's devices: sizes, and the target's flushes. */
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  /** Its chunk size already within what both devices take in one request. */
  readonly tuning: CopyTuning;
  readonly modes: IoModeCandidates;
  /** The target was created for this job: nothing but this pass has written it. */
  readonly targetIsZero: boolean;
  /** No chunk size was asked for (see BulkCopy's `largeRequests`). */
  readonly largeRequests: boolean;
  /**
   * Worker threads of the pass's own, closed once it has ended, where the mirror's copier runs on
   * the coordinator (a daemon's job). Without: the mirror's runner, left open for its copier.
   */
  readonly ownRunner?: CopyRunner;
}

/** What a {@link MirrorFirstPass} copies with. */
export interface MirrorFirstPassSettings extends FirstPassPlan {
  readonly sourceSpec: DeviceSpec;
  readonly targetSpec: DeviceSpec;
  /** The mirror's runner (unless the plan brings its own). */
  readonly runner: CopyRunner;
  readonly bitmap: DirtyBitmap;
  readonly locks: RangeLocks;
  readonly unflushed: UnflushedCopies | undefined;
  /** Called with the failed extents of a batch (their bits are set again: invariant 2). */
  readonly onFailures: (failed: readonly FailedExtent[]) => void;
  /** Called once if a flush of the target fails; everything is marked dirty again first. */
  readonly onFlushError: (err: unknown) => void;
  /** Called after every batch (the copier checks its backlog waiters). */
  readonly onBatch: () => void;
}

/**
 * The first pass of a full mirror: the bulk copy's engine (its measured I/O plan, large O_DIRECT
 * requests, hole scan) over the image once, at full speed as QEMU's copy starts, claiming each
 * extent from the dirty bitmap as the mirror's copier does (bits cleared before the copy reads,
 * copy locks held: invariants 2 and 3), so the application may write meanwhile. It ends when the
 * copy is first slowed down (the controller's first probe or back-off, a speed limit), at a pause,
 * a switch to write-blocking, a stop or a failure: its streams stop after the extent each is on,
 * whatever they claimed and did not copy is marked dirty again, and the mirror's copier, which the
 * controller paces, copies everything still dirty. So nothing the pass leaves is lost, and once
 * the application needs the copy to slow down it waits for no more than the extents in flight.
 */
export class MirrorFirstPass {
  readonly #copy: BulkCopy;
  readonly #chooser: IoPlanChooser;
  readonly #modes: IoModeCandidates;
  readonly #stop = new AbortController();
  #endedBy: string | undefined;
  #started = 0;
  #seconds: number | undefined;
  readonly #ownRunner: CopyRunner | undefined;
  #closed: Promise<void> | undefined;

  constructor(settings: MirrorFirstPassSettings) {
    const { source, tuning, modes } = settings;
    const runner = settings.ownRunner ?? settings.runner;
    this.#ownRunner = settings.ownRunner;
    this.#modes = modes;
    this.#chooser = new IoPlanChooser({ size: source.size, alignment: tuning.chunkSize, warmupBytes: tuning.chunkSize * tuning.queueDepth, ...modes });
    this.#copy = new BulkCopy({
      sourceSpec: settings.sourceSpec,
      targetSpec: settings.targetSpec,
      source,
      target: new FlushWatch(settings.target, (err) => this.#flushFailed(settings, err)),
      tuning,
      // The mirror's copier goes on with the same workers; threads of the pass's own are closed by close().
      runner: { run: (task) => runner.run(task), close: async () => undefined },
      chooser: this.#chooser,
      detectZeroes: true,
      targetIsZero: settings.targetIsZero,
      streams: true,
      largeRequests: settings.largeRequests,
      holeScan: modes.holeScan,
      ...(runner.up ? { workersUp: runner.up } : {}),
      phaseExtents: (ranges) => new ClaimedRanges(settings, ranges),
      started: performance.now(),
    });
  }

  /** Bytes copied so far. */
  get bytesCopied(): number {
    return this.#copy.bytesDone;
  }

  get inFlightBytes(): number {
    return this.#copy.inFlightBytes;
  }

  get inFlightOperations(): number {
    return this.#copy.inFlightOperations;
  }

  /** True from {@link run} until it has ended, its last flush included. */
  get running(): boolean {
    return this.#started > 0 && this.#seconds === undefined;
  }

  /** What the pass did, once it has ended. */
  get summary(): FirstPassSummary | undefined {
    if (this.#seconds === undefined) return undefined;
    return { io: describeChoice(this.#chooser.choice, this.#modes), bytesCopied: this.bytesCopied, seconds: this.#seconds, endedBy: this.#endedBy };
  }

  /**
   * Copies until the end of the image or {@link end}. Never rejects: a failed extent has been
   * reported through `onFailures` and marked dirty again, and the mirror's copier copies what
   * the pass did not.
   */
  async run(): Promise<void> {
    this.#started = performance.now();
    try {
      await this.#copy.run({ signal: this.#stop.signal });
      this.#endedBy = undefined; // it reached the end: an end asked for during its final flush came too late to cut it short
    } catch (err) {
      this.#endedBy ??= `it failed: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      this.#seconds = (performance.now() - this.#started) / 1000;
      void this.close();
    }
  }

  /** Closes the pass's own threads, if it has any (at its end, or at a stop before it ran). Never rejects. */
  close(): Promise<void> {
    this.#closed ??= this.#ownRunner ? this.#ownRunner.close().catch(() => undefined) : Promise.resolve();
    return this.#closed;
  }

  /**
   * The pass flushes the job's own handle of the target, which reports a write-back error once:
   * a failure it kept to itself would let the job's next flush succeed over lost writes. So the
   * whole image is marked dirty again (what the pass copied since its last good flush is not known
   * to be on the target), and the failure goes to the job's error policy.
   */
  #flushFailed(settings: MirrorFirstPassSettings, err: unknown): void {
    this.#endedBy ??= `its flush of the target failed: ${err instanceof Error ? err.message : String(err)}`;
    settings.bitmap.markAll();
    settings.onFlushError(err);
  }

  /** Hands over to the mirror's copier: the streams stop after the extent each is on. */
  end(reason: string): void {
    if (this.#endedBy !== undefined || this.#seconds !== undefined) return;
    this.#endedBy = reason;
    this.#stop.abort();
  }
}

/**
 * The target as the pass flushes it, calling `onFailure` once if a flush fails (before the
 * failure goes on to the copy, which ends).
 */
class FlushWatch extends DeviceWrapper {
  readonly #onFailure: (err: unknown) => void;
  #failed = false;

  constructor(inner: BlockDevice, onFailure: (err: unknown) => void) {
    super(inner);
    this.#onFailure = onFailure;
  }

  override async flush(): Promise<void> {
    try {
      await this.inner.flush();
    } catch (err) {
      if (!this.#failed) {
        this.#failed = true;
        this.#onFailure(err);
      }
      throw err;
    }
  }
}

/**
 * One phase's extents for the first pass: the dirty bits in its ranges, claimed under copy locks
 * (a {@link GuardedDirtyExtents} over a {@link DirtyRangeCursor}). A finished batch marks what it
 * did not copy (a stopped stream's rest, failures) dirty again before its claims end.
 */
class ClaimedRanges implements PhaseExtentSource {
  readonly #s: MirrorFirstPassSettings;
  readonly #cursor: DirtyRangeCursor;
  readonly #claims: GuardedDirtyExtents;

  constructor(settings: MirrorFirstPassSettings, ranges: ReadonlyArray<readonly [number, number]>) {
    this.#s = settings;
    this.#cursor = new DirtyRangeCursor(settings.bitmap, ranges);
    this.#claims = new GuardedDirtyExtents(settings.bitmap, settings.locks, {}, settings.unflushed, this.#cursor);
  }

  get exhausted(): boolean {
    return this.#cursor.exhausted;
  }

  get remaining(): number {
    return this.#cursor.remaining;
  }

  rest(): Array<[number, number]> {
    return this.#cursor.rest();
  }

  take(out: number[], maxExtents: number, maxBytes: number): number {
    return this.#claims.take(out, maxExtents, maxBytes);
  }

  finished(outcome: BatchOutcome): void {
    const { failed } = this.#claims.finish(outcome);
    if (failed.length) this.#s.onFailures(failed);
    this.#s.onBatch();
  }
}

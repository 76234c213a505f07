import { performance } from 'node:perf_hooks';
import { IoError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { CopyScheduler, type BatchOutcome } from '../sched/CopyScheduler.js';
import { RangesExtentSource } from '../sched/ExtentSource.js';
import { IoPlanChooser, type CopyPhase, type IoPlan } from '../sched/IoPlanChooser.js';
import { RateLimiter } from '../sched/RateLimiter.js';
import { DEFAULT_PROGRESS_INTERVAL_MS, PassProgress, type PassProgressReport } from '../sched/PassProgress.js';
import { batchExtentsFor, STREAM_BYTES, type CopyTuning } from '../sched/tuning.js';
import { WritebackPacer } from '../sched/WritebackPacer.js';
import type { CopyRunner } from '../workers/createCopyRunner.js';

/** A progress report of a bulk copy. */
export interface CopyProgress extends PassProgressReport {
  /** Bytes written to the target (zero chunks skipped are not). */
  readonly bytesWritten: number;
  /** Bytes found all-zero. */
  readonly bytesZero: number;
}

/** What a {@link BulkCopy} copies with. */
export interface BulkCopySettings {
  readonly sourceSpec: DeviceSpec;
  readonly targetSpec: DeviceSpec;
  /** The coordinator's own devices: sizes, and the target's flushes. */
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  readonly tuning: CopyTuning;
  readonly runner: CopyRunner;
  readonly chooser: IoPlanChooser;
  readonly detectZeroes: boolean;
  readonly targetIsZero: boolean;
  /**
   * Tasks are streams, each walking its own region in order, so the kernel's readahead has each
   * next read in memory before it is asked for (docs/perf.md, "Bulk copy"). Not under a rate
   * limit, whose slices are smaller than a stream, nor over NBD.
   */
  readonly streams: boolean;
  /** The source is mostly holes: its O_DIRECT phases run as hole scans (see {@link HOLE_SCAN}). */
  readonly sparseSource?: boolean;
  readonly started: number;
}

/**
 * How the O_DIRECT phases of a mostly-hole source run: a hole read with O_DIRECT costs no disk
 * I/O, only the kernel's zero fill and the zero check, both bound by memory. Two streams of
 * 4 MiB reads keep each core's buffer in its cache: 21–24 GB/s of holes here, against 14 GB/s with
 * 16 streams of 1 MiB, and half the CPU (docs/perf.md, "Second wave").
 */
export const HOLE_SCAN = { chunkBytes: 4 << 20, streams: 2 } as const;

/** Options that reach a running copy. */
export interface BulkCopyRunOptions {
  readonly onProgress?: (progress: CopyProgress) => void;
  readonly progressInterval?: number;
  readonly signal?: AbortSignal;
}

/**
 * One run of a bulk copy over the whole image: phases chosen by an {@link IoPlanChooser}, each a
 * {@link CopyScheduler} over its range with the plan's device specs, write-back paced and
 * charged to the phase that caused it, progress reported throughout.
 */
export class BulkCopy {
  bytesDone = 0;
  bytesWritten = 0;
  bytesZero = 0;
  pacedFlushes = 0;
  readonly size: number;
  readonly #s: BulkCopySettings;
  readonly #progress: PassProgress;
  readonly #limiter: RateLimiter;
  #failure: IoError | undefined;
  #scheduler: CopyScheduler | undefined;
  #stopped = false;

  constructor(settings: BulkCopySettings) {
    this.#s = settings;
    this.size = settings.source.size;
    this.#progress = new PassProgress(this.size, settings.started);
    this.#limiter = new RateLimiter(settings.tuning.speed);
  }

  async run(options: BulkCopyRunOptions): Promise<void> {
    const { chooser, target, runner } = this.#s;
    const onAbort = (): void => this.#stop();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort(); // aborted while the copy was being set up
    const report = (): void => options.onProgress?.(this.progress());
    const ticker = options.onProgress ? setInterval(report, options.progressInterval ?? DEFAULT_PROGRESS_INTERVAL_MS) : undefined;
    try {
      for (let phase = chooser.next(); phase && !this.#stopped; phase = chooser.next()) {
        const t0 = performance.now();
        await this.#runPhase(phase);
        if (this.#stopped) break;
        chooser.record(phase, (performance.now() - t0) / 1000);
      }
      if (this.#failure) throw this.#failure;
      if (options.signal?.aborted) throw this.#progress.interrupted('copied', this.bytesDone, '; the target is incomplete');
      await target.flush();
      report();
    } finally {
      clearInterval(ticker);
      options.signal?.removeEventListener('abort', onAbort);
      await runner.close();
    }
  }

  progress(): CopyProgress {
    return { ...this.#progress.sample(this.bytesDone), bytesWritten: this.bytesWritten, bytesZero: this.bytesZero };
  }

  /** Copies the phase's ranges with its plan; a page-cache target is flushed at its end. */
  async #runPhase(phase: CopyPhase): Promise<void> {
    const { tuning, source, target, runner } = this.#s;
    const holeScan = this.#s.sparseSource === true && phase.plan.read === 'direct' && this.#s.streams;
    const chunkSize = Math.min(holeScan ? Math.max(tuning.chunkSize, HOLE_SCAN.chunkBytes) : tuning.chunkSize, target.maxRequest, source.maxRequest);
    const queueDepth = holeScan ? Math.min(tuning.queueDepth, HOLE_SCAN.streams) : tuning.queueDepth;
    const buffered = phase.plan.write === 'buffered';
    const pacer = new WritebackPacer(() => target.flush(), buffered ? tuning.flushEvery : 0);
    const { streams } = this.#s;
    // Every stream of a phase runs at once: a trial phase shorter than queueDepth streams of
    // STREAM_BYTES gets shorter streams, so it measures the copy at its full depth.
    const bytes = phase.ranges.reduce((n, [start, end]) => n + end - start, 0);
    const streamBytes = Math.max(chunkSize, Math.min(STREAM_BYTES, Math.floor(bytes / queueDepth / chunkSize) * chunkSize));
    const scheduler = new CopyScheduler({
      pool: runner,
      source: specFor(this.#s.sourceSpec, phase.plan.read),
      target: specFor(this.#s.targetSpec, phase.plan.write),
      chunkSize,
      queueDepth,
      batchExtents: streams ? Math.max(1, Math.floor(streamBytes / chunkSize)) : batchExtentsFor(queueDepth, tuning.workers),
      streams,
      detectZeroes: this.#s.detectZeroes,
      targetIsZero: this.#s.targetIsZero,
      limiter: this.#limiter,
      onBatch: (outcome) => {
        this.#account(outcome);
        pacer.noteWritten(outcome.result.bytesWritten);
        if (this.#failure || pacer.error) this.#stop();
      },
    });
    this.#scheduler = scheduler;
    try {
      await scheduler.run(new RangesExtentSource(phase.ranges));
      await pacer.settle();
      // Write-back deferred by the page cache is a trial's cost: paid here, not by the next
      // phase. A run segment leaves it to the pacer's flushes and the final one, as a copy
      // through the page cache is best run (the kernel writes back while the copy goes on).
      if (buffered && phase.trial && !this.#stopped) await target.flush();
    } finally {
      this.pacedFlushes += pacer.flushes;
      this.#scheduler = undefined;
    }
  }

  #stop(): void {
    this.#stopped = true;
    this.#scheduler?.stop();
  }

  #account({ extents, bytes, result }: BatchOutcome): void {
    this.bytesWritten += result.bytesWritten;
    this.bytesZero += result.bytesZero;
    let failed = 0;
    for (const f of result.failures) {
      const offset = extents[2 * f.index]!;
      const length = extents[2 * f.index + 1]!;
      failed += length;
      this.#failure ??= new IoError(f.errno, f.operation, f.message, { offset, length });
    }
    this.bytesDone += bytes - failed;
  }
}

/** A file spec opened the way `mode` says; other devices have no page cache of ours to choose about. */
function specFor(spec: DeviceSpec, mode: IoPlan['read']): DeviceSpec {
  return spec.kind === 'file' ? { ...spec, direct: mode === 'direct' } : spec;
}

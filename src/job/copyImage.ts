import { performance } from 'node:perf_hooks';
import { AbortError, IoError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { deviceSpecFor } from '../io/location.js';
import { openDevice } from '../io/openDevice.js';
import { checkTargetSize, prepareTarget } from '../io/prepareTarget.js';
import { CopyScheduler, type BatchOutcome } from '../sched/CopyScheduler.js';
import { LinearExtentSource } from '../sched/ExtentSource.js';
import { RateLimiter } from '../sched/RateLimiter.js';
import { RateMeter } from '../sched/RateMeter.js';
import { TASKS_PER_WORKER, batchExtentsFor, resolveTuning, streamExtentsFor, type CopyTuning } from '../sched/tuning.js';
import { WritebackPacer } from '../sched/WritebackPacer.js';
import { formatBytes } from '../util/size.js';
import { createCopyRunner, type CopyRunner } from '../workers/createCopyRunner.js';

/** Default time between two `onProgress` calls. */
export const DEFAULT_PROGRESS_INTERVAL_MS = 100;

/** Options of {@link copyImage}. Sizes are in bytes. */
export interface CopyOptions extends Partial<CopyTuning> {
  /** Bypass the page cache with O_DIRECT (aligned buffers; the unaligned tail goes through the cache). */
  direct?: boolean;
  /** Look for all-zero chunks and keep them sparse on the target (default true). */
  detectZeroes?: boolean;
  /** Promise that an existing target already reads as zeros, so zero chunks are skipped unseen (as qemu-img's --target-is-zero). */
  targetIsZero?: boolean;
  /** Called with progress at most every `progressInterval` ms, and once at the end. */
  onProgress?: (progress: CopyProgress) => void;
  progressInterval?: number;
  /** Aborting stops the copy once the operations in flight finish; the promise rejects with an AbortError. */
  signal?: AbortSignal;
}

/** A progress report. */
export interface CopyProgress {
  readonly bytesDone: number;
  readonly bytesTotal: number;
  /** Bytes written to the target (zero chunks skipped are not). */
  readonly bytesWritten: number;
  /** Bytes found all-zero. */
  readonly bytesZero: number;
  readonly elapsedSeconds: number;
  /** Smoothed copy rate, bytes per second. */
  readonly rate: number;
  /** Seconds to go at the current rate (Infinity while unknown). */
  readonly etaSeconds: number;
}

/** What a finished copy did. */
export interface CopyResult {
  /** Size of the source: every byte of it is now on the target. */
  readonly bytes: number;
  readonly seconds: number;
  readonly bytesWritten: number;
  readonly bytesZero: number;
  /** True when the target did not exist and was created. */
  readonly targetCreated: boolean;
  /** Flushes run during the copy to pace write-back, besides the final one. */
  readonly pacedFlushes: number;
  /** The tuning the copy ran with (`workers` may be lower than asked: see `note`). */
  readonly tuning: CopyTuning;
  /** Why the copy ran differently from what was asked (one connection to an NBD export without multi-conn), if it did. */
  readonly note: string | undefined;
}

/**
 * Copies a raw image, block device or NBD export to a target, through the worker pool (or, when
 * an NBD export is involved, on this thread's own connections: see job/connectionPlan.ts), ending
 * with the data on disk. Source and target are paths or NBD URIs (`nbd://host[:port]/export`,
 * `nbd+unix:///export?socket=PATH`). A missing file target is created sized to the source; an
 * existing one, or an NBD export, must be at least as large and writable, and is checked before
 * anything is written. Holes of an NBD source that reports `base:allocation` are not read, and
 * zero chunks become WRITE_ZEROES on an NBD target.
 *
 * Set UV_THREADPOOL_SIZE to {@link threadpoolSizeFor}(queueDepth) before the process's first I/O,
 * or libuv runs at most 4 operations at once.
 */
export async function copyImage(source: string, target: string, options: CopyOptions = {}): Promise<CopyResult> {
  const tuning = resolveTuning(options);
  if (options.signal?.aborted) throw new AbortError('the copy was aborted before it started');
  const started = performance.now();
  const sourceSpec = deviceSpecFor(source, { role: 'source', writable: false, direct: options.direct });
  const targetSpec = deviceSpecFor(target, { role: 'target', writable: true, direct: options.direct });
  const src = await openDevice(sourceSpec);
  let dst: BlockDevice | undefined;
  try {
    const { created } = await prepareTarget(targetSpec, sourceSpec, src.size);
    dst = await openDevice(targetSpec);
    checkTargetSize(target, dst.size, src.size);
    const streams = copiesInStreams(sourceSpec, targetSpec, tuning);
    // Every stream is one task, so each worker must run its share of them at once.
    const tasksPerWorker = streams ? Math.ceil(tuning.queueDepth / tuning.workers) : TASKS_PER_WORKER;
    const { runner, plan } = createCopyRunner(src, dst, sourceSpec, { workers: tuning.workers, tasksPerWorker });
    const runTuning = plan.inline ? { ...tuning, workers: 1 } : tuning;
    const run = new BulkCopy(sourceSpec, targetSpec, src, dst, runTuning, runner, {
      detectZeroes: options.detectZeroes ?? true,
      targetIsZero: created || options.targetIsZero === true,
      streams,
      started,
    });
    await run.run(options);
    return {
      bytes: src.size,
      seconds: (performance.now() - started) / 1000,
      bytesWritten: run.bytesWritten,
      bytesZero: run.bytesZero,
      targetCreated: created,
      pacedFlushes: run.pacedFlushes,
      tuning: runTuning,
      note: plan.note,
    };
  } finally {
    await Promise.all([src.close(), dst?.close()]);
  }
}

/**
 * Page-cache copies between files run as streams, each walking its own region in order: the
 * kernel's readahead then has each next read in memory before it is asked for (docs/perf.md,
 * "Bulk copy"). Not under a rate limit, whose slices are smaller than a stream, nor with O_DIRECT
 * or NBD, where no readahead is in play.
 */
function copiesInStreams(sourceSpec: DeviceSpec, targetSpec: DeviceSpec, tuning: CopyTuning): boolean {
  return tuning.speed === 0 && sourceSpec.kind === 'file' && targetSpec.kind === 'file' && !sourceSpec.direct && !targetSpec.direct;
}

interface BulkCopySettings {
  readonly detectZeroes: boolean;
  readonly targetIsZero: boolean;
  /** Tasks are streams (see {@link copiesInStreams}). */
  readonly streams: boolean;
  readonly started: number;
}

/** One run of a bulk copy: the pool, the scheduler over the whole image, pacing and progress. */
class BulkCopy {
  bytesDone = 0;
  bytesWritten = 0;
  bytesZero = 0;
  pacedFlushes = 0;
  #failure: IoError | undefined;
  readonly #meter = new RateMeter();

  readonly size: number;

  constructor(
    readonly sourceSpec: DeviceSpec,
    readonly targetSpec: DeviceSpec,
    readonly source: BlockDevice,
    readonly target: BlockDevice,
    readonly tuning: CopyTuning,
    readonly pool: CopyRunner,
    readonly settings: BulkCopySettings,
  ) {
    this.size = source.size;
  }

  async run(options: CopyOptions): Promise<void> {
    const { tuning, source, target, pool } = this;
    const pacer = new WritebackPacer(() => target.flush(), tuning.flushEvery);
    const chunkSize = Math.min(tuning.chunkSize, target.maxRequest, source.maxRequest);
    const { streams } = this.settings;
    const scheduler = new CopyScheduler({
      pool,
      source: this.sourceSpec,
      target: this.targetSpec,
      chunkSize,
      queueDepth: tuning.queueDepth,
      batchExtents: streams ? streamExtentsFor(chunkSize) : batchExtentsFor(tuning.queueDepth, tuning.workers),
      streams,
      detectZeroes: this.settings.detectZeroes,
      targetIsZero: this.settings.targetIsZero,
      limiter: new RateLimiter(tuning.speed),
      onBatch: (outcome) => {
        this.#account(outcome);
        pacer.noteWritten(outcome.result.bytesWritten);
        if (this.#failure || pacer.error) scheduler.stop();
      },
    });
    const onAbort = (): void => scheduler.stop();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const report = (): void => options.onProgress?.(this.progress());
    const ticker = options.onProgress ? setInterval(report, options.progressInterval ?? 100) : undefined;
    try {
      await scheduler.run(new LinearExtentSource(this.size));
      await pacer.settle();
      if (this.#failure) throw this.#failure;
      if (options.signal?.aborted) {
        const pct = ((100 * this.bytesDone) / this.size).toFixed(1);
        throw new AbortError(`interrupted: copied ${formatBytes(this.bytesDone)} of ${formatBytes(this.size)} (${pct}%); the target is incomplete`, {
          progress: { bytesDone: this.bytesDone, bytesTotal: this.size },
        });
      }
      await target.flush();
      report();
    } finally {
      clearInterval(ticker);
      options.signal?.removeEventListener('abort', onAbort);
      this.pacedFlushes = pacer.flushes;
      await pool.close();
    }
  }

  progress(): CopyProgress {
    const now = performance.now();
    const rate = this.#meter.sample(this.bytesDone, now);
    const remaining = this.size - this.bytesDone;
    return {
      bytesDone: this.bytesDone,
      bytesTotal: this.size,
      bytesWritten: this.bytesWritten,
      bytesZero: this.bytesZero,
      elapsedSeconds: (now - this.settings.started) / 1000,
      rate,
      etaSeconds: remaining === 0 ? 0 : rate > 0 ? remaining / rate : Number.POSITIVE_INFINITY,
    };
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

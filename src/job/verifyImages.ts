import { performance } from 'node:perf_hooks';
import { DEFAULT_GRANULARITY, DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { AbortError, DeviceError, ErrorCode, InvalidArgumentError, IoError, errnoOf } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { checkLocation, describeValue, deviceSpecFor } from '../io/location.js';
import { openDevice } from '../io/openDevice.js';
import { checkTargetSize } from '../io/prepareTarget.js';
import { DEFAULT_PROGRESS_INTERVAL_MS, PassProgress, type PassProgressReport } from '../sched/PassProgress.js';
import { DEFAULT_QUEUE_DEPTH, TASKS_PER_WORKER, resolveTuning } from '../sched/tuning.js';
import { ExtentComparer } from '../workers/ExtentComparer.js';
import { WorkerPool } from '../workers/WorkerPool.js';
import type { VerifyTask, VerifyTaskResult } from '../workers/VerifyTask.js';
import { planConnections } from './connectionPlan.js';

/** Bytes one task of a pooled verify compares, in order (a stream the kernel's readahead serves). */
const VERIFY_BATCH_BYTES = 16 << 20;

/** Options of {@link verifyImages}. Sizes are in bytes. */
export interface VerifyImagesOptions {
  /** A path or an NBD URI. */
  readonly source: string;
  /** A path or an NBD URI, at least as large as the source (only the source's size is compared). */
  readonly target: string;
  /** Bytes read on each side per operation: a power of two from 4 KiB to 64 MiB (default 1 MiB). */
  readonly chunkSize?: number;
  /** Worker threads (default: cores, at most 4); 0 compares on this thread. NBD exports always compare on this thread. */
  readonly workers?: number;
  /** Resolution of the differing extents and bytes per bit of the bitmap: a power of two from 512 B to 64 MiB (default 64 KiB). */
  readonly granularity?: number;
  /** Called with progress at most every `progressInterval` ms, and once at the end. */
  readonly onProgress?: (progress: VerifyProgress) => void;
  readonly progressInterval?: number;
  /** Aborting stops the comparison once the reads in flight finish; the promise rejects with an AbortError. */
  readonly signal?: AbortSignal;
}

/** A progress report of {@link verifyImages}. */
export interface VerifyProgress extends PassProgressReport {
  /** Bytes of the granules found differing so far. */
  readonly differingBytes: number;
}

/** A run of differing granules: `length` bytes from `offset` (the last granule clipped to the source size). */
export interface VerifyExtent {
  readonly offset: number;
  readonly length: number;
}

/** What a finished {@link verifyImages} found. */
export interface VerifyResult {
  /** Bytes compared: the source's size. */
  readonly bytes: number;
  readonly seconds: number;
  /** Total length of {@link extents}: 0 when the images are identical. */
  readonly differingBytes: number;
  /** The differing extents at `granularity` resolution, coalesced, in offset order. */
  readonly extents: VerifyExtent[];
  /**
   * A bitmap of the source's size and the granularity with exactly the differing granules set:
   * save it with {@link saveBitmap} for a mirror to repair those extents only.
   */
  readonly bitmap: DirtyBitmap;
}

/** Runs verify tasks: the worker pool, or a comparer on the coordinator's own devices. */
interface VerifyRunner {
  run(task: VerifyTask): Promise<VerifyTaskResult>;
  close(): Promise<void>;
}

/**
 * Compares two images (paths or NBD URIs) chunk by chunk, as DRBD's online verify does, and
 * reports every differing extent at `granularity` resolution, with a dirty bitmap of them. Both
 * sides are opened read-only and nothing is written. The target must be at least as large as the
 * source (`BM_ERR_SIZE_MISMATCH`); the source's size is compared. Two files are compared on the
 * worker pool; an NBD export keeps the comparison on this thread's own connections (see
 * job/connectionPlan.ts). A read that fails rejects with `BM_ERR_IO`.
 */
export async function verifyImages(options: VerifyImagesOptions): Promise<VerifyResult> {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `verifyImages takes an options object, not ${describeValue(options)}`);
  }
  const source = checkLocation(options.source, 'source');
  const target = checkLocation(options.target, 'target');
  const noWorkers = options.workers === 0;
  const tuning = resolveTuning({ chunkSize: options.chunkSize, workers: noWorkers ? 1 : options.workers });
  const granularity = options.granularity ?? DEFAULT_GRANULARITY;
  DirtyBitmap.create(0, granularity); // checks the granularity before anything is opened
  if (options.signal?.aborted) throw new AbortError('the verify was aborted before it started');
  const started = performance.now();
  const sourceSpec = deviceSpecFor(source, { role: 'source', writable: false });
  const targetSpec = deviceSpecFor(target, { role: 'target', writable: false });
  const src = await openDevice(sourceSpec);
  let dst: BlockDevice | undefined;
  try {
    dst = await openTarget(targetSpec);
    checkTargetSize(target, dst.size, src.size);
    const bitmap = DirtyBitmap.create(src.size, granularity);
    const inline = noWorkers || planConnections(src, dst).inline;
    const runner: VerifyRunner = inline
      ? inlineRunner(new ExtentComparer(src, dst))
      : new WorkerPool<VerifyTask, VerifyTaskResult>('workers/verifyWorker.js', { workers: tuning.workers, tasksPerWorker: TASKS_PER_WORKER });
    const chunk = Math.min(tuning.chunkSize, src.maxRequest, dst.maxRequest);
    const run = new VerifyRun({
      size: src.size,
      chunk,
      batchExtents: inline ? 1 : Math.max(1, Math.floor(VERIFY_BATCH_BYTES / chunk)),
      inFlight: inline ? DEFAULT_QUEUE_DEPTH : tuning.workers * TASKS_PER_WORKER,
      task: (extents) => ({ source: sourceSpec, target: targetSpec, extents, granularity }),
      runner,
      bitmap,
      started,
    });
    await run.run(options);
    const extents = [...bitmap.extents()].map(([offset, length]) => ({ offset, length }));
    return {
      bytes: src.size,
      seconds: (performance.now() - started) / 1000,
      differingBytes: extents.reduce((n, e) => n + e.length, 0),
      extents,
      bitmap,
    };
  } finally {
    await Promise.all([src.close(), dst?.close()]);
  }
}

/** Opens the target for reading; a missing one is named as the target, not as something to write. */
async function openTarget(spec: DeviceSpec): Promise<BlockDevice> {
  try {
    return await openDevice(spec);
  } catch (err) {
    if (err instanceof DeviceError && err.code === ErrorCode.TARGET_UNWRITABLE) {
      const errno = errnoOf(err.cause);
      const why = errno === 'ENOENT' || errno === 'ENOTDIR' ? 'does not exist' : `cannot be opened for reading (${errno})`;
      throw new DeviceError(err.code, err.path, `target ${err.path} ${why}`, { cause: err.cause });
    }
    throw err;
  }
}

function inlineRunner(comparer: ExtentComparer): VerifyRunner {
  return { run: (task) => comparer.compare(task), close: async () => {} };
}

interface VerifyRunSettings {
  readonly size: number;
  readonly chunk: number;
  readonly batchExtents: number;
  readonly inFlight: number;
  readonly task: (extents: number[]) => VerifyTask;
  readonly runner: VerifyRunner;
  readonly bitmap: DirtyBitmap;
  readonly started: number;
}

/** One pass over the source's range: tasks of consecutive chunks, `inFlight` of them at once. */
class VerifyRun {
  readonly #s: VerifyRunSettings;
  readonly #progressOf: PassProgress;
  #next = 0;
  #bytesDone = 0;
  #stopped = false;
  #failure: Error | undefined;

  constructor(settings: VerifyRunSettings) {
    this.#s = settings;
    this.#progressOf = new PassProgress(settings.size, settings.started);
  }

  async run(options: Pick<VerifyImagesOptions, 'onProgress' | 'progressInterval' | 'signal'>): Promise<void> {
    const onAbort = (): void => {
      this.#stopped = true;
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort(); // aborted while the devices were being opened
    const report = (): void => options.onProgress?.(this.#progress());
    const ticker = options.onProgress ? setInterval(report, options.progressInterval ?? DEFAULT_PROGRESS_INTERVAL_MS) : undefined;
    try {
      await Promise.all(Array.from({ length: this.#s.inFlight }, () => this.#lane()));
      if (this.#failure) throw this.#failure;
      const { size } = this.#s;
      if (options.signal?.aborted && this.#bytesDone < size) throw this.#progressOf.interrupted('compared', this.#bytesDone);
      report();
    } finally {
      clearInterval(ticker);
      options.signal?.removeEventListener('abort', onAbort);
      await this.#s.runner.close();
    }
  }

  /** Takes the next batch of chunks and compares it, until the range is done or the run stops. */
  async #lane(): Promise<void> {
    const { size, chunk, batchExtents } = this.#s;
    while (!this.#stopped && this.#next < size) {
      const extents: number[] = [];
      while (extents.length < 2 * batchExtents && this.#next < size) {
        const length = Math.min(chunk, size - this.#next);
        extents.push(this.#next, length);
        this.#next += length;
      }
      try {
        this.#account(extents, await this.#s.runner.run(this.#s.task(extents)));
      } catch (err) {
        this.#failure ??= err instanceof Error ? err : new Error(String(err));
        this.#stopped = true;
      }
    }
  }

  #account(extents: readonly number[], result: VerifyTaskResult): void {
    const { bitmap } = this.#s;
    for (let i = 0; i < result.differing.length; i += 2) {
      bitmap.mark(result.differing[i]!, result.differing[i + 1]!);
    }
    let failed = 0;
    for (const f of result.failures) {
      const offset = extents[2 * f.index]!;
      const length = extents[2 * f.index + 1]!;
      failed += length;
      this.#failure ??= new IoError(f.errno, 'read', f.message, { offset, length });
      this.#stopped = true;
    }
    for (let i = 1; i < extents.length; i += 2) this.#bytesDone += extents[i]!;
    this.#bytesDone -= failed;
  }

  #progress(): VerifyProgress {
    return { ...this.#progressOf.sample(this.#bytesDone), differingBytes: this.#s.bitmap.dirtyBytes() };
  }
}

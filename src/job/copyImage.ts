import { performance } from 'node:perf_hooks';
import { AbortError, ErrorCode, InvalidArgumentError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { checkLocation, describeValue, deviceSpecFor } from '../io/location.js';
import { openDevice } from '../io/openDevice.js';
import { checkTargetSize, prepareTarget } from '../io/prepareTarget.js';
import { IoPlanChooser, type IoMode, type IoPlanChoice } from '../sched/IoPlanChooser.js';
import { DEFAULT_COPY_WORKERS, TASKS_PER_WORKER, resolveTuning, streamTasksPerWorker, type CopyTuning } from '../sched/tuning.js';
import { createCopyRunner } from '../workers/createCopyRunner.js';
import { EagerCopyPool } from '../workers/EagerCopyPool.js';
import { BulkCopy } from './BulkCopy.js';
import { askedMode, describeChoice, ioModeCandidates } from './ioModeCandidates.js';
import type { CopyProgress } from './BulkCopy.js';

export type { CopyProgress } from './BulkCopy.js';

/** Default time between two `onProgress` calls. */
export { DEFAULT_PROGRESS_INTERVAL_MS } from '../sched/PassProgress.js';

/** Options of {@link copyImage}. Sizes are in bytes. */
export interface CopyOptions extends Partial<CopyTuning> {
  /**
   * Largest extent one operation copies, and the size at which zero chunks are found (default
   * 1 MiB). Left unset, the O_DIRECT phases of a copy between files move 8 MiB per request,
   * cheaper per byte, and still find zeros at 1 MiB.
   */
  chunkSize?: number;
  /** Worker threads (default {@link DEFAULT_COPY_WORKERS}: one, as the requests are large). */
  workers?: number;
  /**
   * Bypass the page cache with O_DIRECT on both sides (aligned buffers; the unaligned tail goes
   * through the cache): the same as `readMode` and `writeMode` 'direct'.
   */
  direct?: boolean;
  /**
   * How a file source is read: through the page cache, with O_DIRECT, or (default) whichever the
   * copy measures faster on its first part (see `CopyResult.io`).
   */
  readMode?: IoModeOption;
  /** How a file target is written: as `readMode`. Page-cache writes are flushed as they go. */
  writeMode?: IoModeOption;
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

/** An I/O mode to use, or `auto`: measure and choose. */
export type IoModeOption = IoMode | 'auto';

/** The single-object form of {@link copyImage}'s arguments, the shape {@link startMirror} takes. */
export interface CopyImageOptions extends CopyOptions {
  /** A path or an NBD URI. */
  readonly source: string;
  /** A path (created, sized to the source, if missing) or an NBD URI. */
  readonly target: string;
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
  /** How the source was read and the target written, and why: measured, asked for, or not measurable. */
  readonly io: IoPlanChoice;
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
export async function copyImage(options: CopyImageOptions): Promise<CopyResult>;
export async function copyImage(source: string, target: string, options?: CopyOptions): Promise<CopyResult>;
export async function copyImage(first: string | CopyImageOptions, second?: string, third?: CopyOptions): Promise<CopyResult> {
  const { source, target, options } = copyArguments(first, second, third);
  const tuning = resolveTuning({ ...options, workers: options.workers ?? DEFAULT_COPY_WORKERS });
  for (const side of ['readMode', 'writeMode'] as const) {
    const mode = options[side];
    if (mode !== undefined && mode !== 'auto' && mode !== 'buffered' && mode !== 'direct') {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${side} must be auto, buffered or direct, not ${describeValue(mode)}`);
    }
  }
  if (options.signal?.aborted) throw new AbortError('the copy was aborted before it started');
  const started = performance.now();
  // Worker threads open their handles as each phase's plan says; these are the coordinator's own
  // (sizes and flushes, and the copy itself where an NBD export keeps it on this thread).
  const sourceSpec = deviceSpecFor(source, { role: 'source', writable: false, direct: askedMode(options, 'readMode') === 'direct' });
  const targetSpec = deviceSpecFor(target, { role: 'target', writable: true, direct: askedMode(options, 'writeMode') === 'direct' });
  const files = sourceSpec.kind === 'file' && targetSpec.kind === 'file';
  const streams = tuning.speed === 0 && files;
  // Every stream is one task, so each worker must run its share of them at once.
  const tasksPerWorker = streams ? streamTasksPerWorker(tuning.queueDepth, tuning.workers) : TASKS_PER_WORKER;
  // Started before the devices are opened: the threads boot meanwhile, and until they are up the
  // coordinator copies (see EagerCopyPool).
  let pool = files && tuning.workers > 0 ? new EagerCopyPool({ workers: tuning.workers, tasksPerWorker }, { source: sourceSpec, target: targetSpec }) : undefined;
  let src: BlockDevice | undefined;
  let dst: BlockDevice | undefined;
  try {
    src = await openDevice(sourceSpec);
    const { created } = await prepareTarget(targetSpec, sourceSpec, src.size);
    dst = await openDevice(targetSpec);
    checkTargetSize(target, dst.size, src.size);
    // Only two files are copied by the worker pool; an NBD export keeps the copy on this thread.
    const modes = await ioModeCandidates(sourceSpec, targetSpec, options, { pooled: files, limited: tuning.speed > 0, size: src.size });
    const { runner, plan } = createCopyRunner(src, dst, sourceSpec, { workers: tuning.workers, tasksPerWorker, pool });
    pool = undefined; // the copy's run closes it from here on
    const runTuning = plan.inline ? { ...tuning, workers: 1 } : tuning;
    const chunkSize = Math.min(tuning.chunkSize, dst.maxRequest, src.maxRequest);
    // The warm-up gives every operation in flight one chunk: each worker opens its handles and buffers.
    const chooser = new IoPlanChooser({ size: src.size, alignment: chunkSize, warmupBytes: chunkSize * tuning.queueDepth, ...modes });
    const run = new BulkCopy({
      sourceSpec,
      targetSpec,
      source: src,
      target: dst,
      tuning: runTuning,
      runner,
      chooser,
      detectZeroes: options.detectZeroes ?? true,
      targetIsZero: created || options.targetIsZero === true,
      streams,
      largeRequests: options.chunkSize === undefined,
      holeScan: modes.holeScan,
      ...(runner.up ? { workersUp: runner.up } : {}),
      started,
    });
    await run.run(options);
    const io = chooser.choice;
    return {
      bytes: src.size,
      seconds: (performance.now() - started) / 1000,
      bytesWritten: run.bytesWritten,
      bytesZero: run.bytesZero,
      targetCreated: created,
      pacedFlushes: run.pacedFlushes,
      tuning: runTuning,
      note: plan.note,
      io: describeChoice(io, modes),
    };
  } finally {
    await Promise.all([src?.close(), dst?.close(), pool?.close()]);
  }
}

/** Both of {@link copyImage}'s argument shapes, checked, as one. */
function copyArguments(first: unknown, second: unknown, third: unknown): { source: string; target: string; options: CopyOptions } {
  if (typeof first === 'object' && first !== null && second === undefined && third === undefined) {
    const { source, target, ...options } = first as CopyImageOptions;
    return { source: checkLocation(source, 'source'), target: checkLocation(target, 'target'), options };
  }
  if (third !== undefined && (typeof third !== 'object' || third === null)) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `copyImage's options must be an object, not ${describeValue(third)}`);
  }
  return { source: checkLocation(first, 'source'), target: checkLocation(second, 'target'), options: (third ?? {}) as CopyOptions };
}

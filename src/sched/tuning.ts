import { availableParallelism } from 'node:os';
import { ErrorCode, InvalidArgumentError } from '../errors.js';
import { isPowerOfTwo } from '../util/size.js';

/** Default largest extent one copy operation moves (QEMU's mirror caps its operations at 1 MiB too). */
export const DEFAULT_CHUNK_SIZE = 1 << 20;
/** Default copy operations in flight (QEMU's mirror allows 16). */
export const DEFAULT_QUEUE_DEPTH = 16;
/** Default bytes a mirror job keeps in flight (QEMU's mirror buffer is 16 MiB too). */
export const DEFAULT_BUFFER_SIZE = 16 << 20;
/** Default bytes written between paced flushes of the target (0 turns pacing off). */
export const DEFAULT_FLUSH_EVERY = 256 << 20;
/**
 * Bytes each stream of a file-to-file bulk copy walks in order (src/job/BulkCopy.ts).
 * 32 and 128 MiB measured alike, 16 MiB less well; the smaller keeps an interrupt prompt (the
 * streams in flight finish first).
 */
export const STREAM_BYTES = 32 << 20;
/** Smallest and largest chunk a copy may use. */
export const MIN_CHUNK_SIZE = 4096;
export const MAX_CHUNK_SIZE = 64 << 20;
/** Tasks each worker runs at once. */
export const TASKS_PER_WORKER = 2;
/** Threads libuv needs beyond one per operation in flight: the flush lane and the coordinator's own I/O. */
const THREADPOOL_SPARE = 4;
/**
 * Requests a daemon's NBD clients may have in flight besides a job's copies (the NBD server's
 * default per-client limit): `blockmirror daemon` sizes the pool for both, so an application's
 * writes do not queue behind a mirror's copy operations.
 */
export const DAEMON_CLIENT_REQUESTS = 64;
/** libuv's own ceiling on UV_THREADPOOL_SIZE. */
const THREADPOOL_MAX = 1024;

/** Default worker threads of a verify: one per core, at most 4 (it reads both images and compares, workers only dispatch). */
export function defaultWorkers(): number {
  return Math.min(4, availableParallelism());
}

/**
 * Default worker threads of a bulk copy. Its requests are large (see job/BulkCopy.ts), so a
 * worker only dispatches them and checks for zeros; a second one costs its boot (about 80 ms of
 * CPU) and made no copy clearly faster here: 1 GiB 0.88 s against 0.97 s with two, 4 GiB 3.06 s
 * against 2.93 s, 64 GiB sparse 3.88 s against 4.17 s (docs/perf.md, "Second wave, second pass").
 */
export const DEFAULT_COPY_WORKERS = 1;

/**
 * Default worker threads of a mirror: one too. Its first pass is the copy's engine; once in sync
 * it copies what the application writes, and on two cores a second thread only competed with the
 * application: eight library lanes kept 12.4k and 12.8k writes/s with one, 8.2k and 9.6k with
 * two; fio through the export, in sync, 12.7k and 13.1k IOPS against 11.1k and 9.7k (later
 * 9.0k and 10.6k against 6.2k and 10.7k). A 4 GiB mirror under an unthrottled fio writer was
 * ready in 5.1 and 5.4 s with one, 4.3 and 4.5 s with two (docs/perf.md, "QMP daemon", fifth pass).
 */
export const DEFAULT_MIRROR_WORKERS = 1;

/**
 * The UV_THREADPOOL_SIZE a process needs for `queueDepth` operations in flight. All file I/O from
 * every thread runs on libuv's one thread pool (4 threads by default), so an unset pool caps the
 * effective queue depth at 4. It must be set before the process's first pool use.
 */
export function threadpoolSizeFor(queueDepth: number): number {
  return Math.min(THREADPOOL_MAX, queueDepth + THREADPOOL_SPARE);
}

/** The knobs every copy shares, checked and with defaults filled in. */
export interface CopyTuning {
  readonly chunkSize: number;
  readonly queueDepth: number;
  readonly workers: number;
  readonly speed: number;
  readonly flushEvery: number;
}

function positiveInteger(value: number, what: string, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${what} must be a whole number from ${min} to ${max}, not ${value}`);
  }
  return value;
}

/** Validates the copy knobs (throwing `BM_ERR_INVALID_OPTION`) and fills in defaults. */
export function resolveTuning(options: Partial<CopyTuning>): CopyTuning {
  const chunkSize = positiveInteger(options.chunkSize ?? DEFAULT_CHUNK_SIZE, 'chunk size', MIN_CHUNK_SIZE, MAX_CHUNK_SIZE);
  if (!isPowerOfTwo(chunkSize)) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `chunk size must be a power of two, not ${chunkSize}`);
  }
  return {
    chunkSize,
    queueDepth: positiveInteger(options.queueDepth ?? DEFAULT_QUEUE_DEPTH, 'queue depth', 1, THREADPOOL_MAX - THREADPOOL_SPARE),
    workers: positiveInteger(options.workers ?? defaultWorkers(), 'workers', 1, 64),
    speed: positiveInteger(options.speed ?? 0, 'speed', 0, Number.MAX_SAFE_INTEGER),
    flushEvery: positiveInteger(options.flushEvery ?? DEFAULT_FLUSH_EVERY, 'flush interval', 0, Number.MAX_SAFE_INTEGER),
  };
}

/** Tasks per worker when every task is a stream (a bulk copy's, a mirror's first pass): each worker runs its share of the streams at once. */
export function streamTasksPerWorker(queueDepth: number, workers: number): number {
  return Math.max(TASKS_PER_WORKER, Math.ceil(queueDepth / workers));
}

/** Extents per task: enough that every worker has `TASKS_PER_WORKER` tasks when the queue is full. */
export function batchExtentsFor(queueDepth: number, workers: number): number {
  return Math.max(1, Math.ceil(queueDepth / (workers * TASKS_PER_WORKER)));
}

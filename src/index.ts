/**
 * blockmirror's public API. Everything a library user needs is exported from here; the rest of
 * `src` is internal and may change.
 *
 * @packageDocumentation
 */

/** Bulk copy of an image: {@link copyImage}. */
export { copyImage, DEFAULT_PROGRESS_INTERVAL_MS } from './job/copyImage.js';
export type { CopyOptions, CopyProgress, CopyResult } from './job/copyImage.js';

/** Copy tuning: defaults, limits, and the libuv thread pool size a queue depth needs. */
export {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_FLUSH_EVERY,
  DEFAULT_QUEUE_DEPTH,
  MAX_CHUNK_SIZE,
  MIN_CHUNK_SIZE,
  threadpoolSizeFor,
} from './sched/tuning.js';
export type { CopyTuning } from './sched/tuning.js';

/** Typed errors with stable codes. */
export {
  AbortError,
  BitmapError,
  BlockmirrorError,
  DeviceError,
  ErrorCode,
  InvalidArgumentError,
  IoError,
  JobError,
  NbdError,
} from './errors.js';
export type { AbortProgress, ErrorCodeValue, IoOperation } from './errors.js';

/** Devices: what sources and targets look like to the engine. */
export type { BlockDevice, DeviceSpec, FileDeviceSpec } from './io/BlockDevice.js';

/** Size parsing and formatting as the command line does it (64K, 1M, 4G). */
export { formatBytes, parseSize } from './util/size.js';

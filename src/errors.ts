/**
 * Typed errors. Every failure a user can meet is a {@link BlockmirrorError} with a stable `code`
 * (listed in {@link ErrorCode}); callers branch on the code, never on the message.
 */

/** Every stable error code blockmirror uses. The values never change once released. */
export const ErrorCode = {
  /** An option or argument has a bad value (a size that does not parse, a negative depth...). */
  INVALID_OPTION: 'BM_ERR_INVALID_OPTION',
  /** The source does not exist. */
  SOURCE_NOT_FOUND: 'BM_ERR_SOURCE_NOT_FOUND',
  /** The source exists but may not be read. */
  SOURCE_UNREADABLE: 'BM_ERR_SOURCE_UNREADABLE',
  /** The source is neither a regular file nor a block device. */
  SOURCE_NOT_AN_IMAGE: 'BM_ERR_SOURCE_NOT_AN_IMAGE',
  /** The target path names a directory. */
  TARGET_IS_DIRECTORY: 'BM_ERR_TARGET_IS_DIRECTORY',
  /** The target exists but may not be written, or cannot be created. */
  TARGET_UNWRITABLE: 'BM_ERR_TARGET_UNWRITABLE',
  /** The target is read-only (an NBD export offered read-only). */
  TARGET_READ_ONLY: 'BM_ERR_TARGET_READ_ONLY',
  /** The target is smaller than the source. */
  SIZE_MISMATCH: 'BM_ERR_SIZE_MISMATCH',
  /** Source and target are the same file. */
  SAME_FILE: 'BM_ERR_SAME_FILE',
  /** A read, write or flush failed; `errno` tells why. */
  IO: 'BM_ERR_IO',
  /** The operation was stopped through its AbortSignal (Ctrl-C on the command line). */
  ABORTED: 'BM_ERR_ABORTED',
  /** A URI could not be parsed or names an unsupported scheme. */
  BAD_URI: 'BM_ERR_BAD_URI',
  /** The persistent bitmap file's body does not match its checksum. */
  BITMAP_CORRUPT: 'BM_ERR_BITMAP_CORRUPT',
  /** The persistent bitmap file's header fails its own checks. */
  BITMAP_HEADER_CORRUPT: 'BM_ERR_BITMAP_HEADER_CORRUPT',
  /** The persistent bitmap file is shorter than its header says. */
  BITMAP_TRUNCATED: 'BM_ERR_BITMAP_TRUNCATED',
  /** The persistent bitmap file is empty. */
  BITMAP_EMPTY: 'BM_ERR_BITMAP_EMPTY',
  /** The file is not a blockmirror bitmap (another magic). */
  BITMAP_FOREIGN: 'BM_ERR_BITMAP_FOREIGN',
  /** The bitmap file has a format version this build does not read. */
  BITMAP_VERSION: 'BM_ERR_BITMAP_VERSION',
  /** Two bitmaps, or a bitmap and an image, disagree on granularity or size. */
  BITMAP_GEOMETRY: 'BM_ERR_BITMAP_GEOMETRY',
  /** A bitmap operation used in a state that forbids it: changing a frozen bitmap, settling a succession twice. */
  BITMAP_STATE: 'BM_ERR_BITMAP_STATE',
  /** The activity log is empty. */
  LOG_EMPTY: 'BM_ERR_LOG_EMPTY',
  /** The file is not a blockmirror activity log (another magic). */
  LOG_FOREIGN: 'BM_ERR_LOG_FOREIGN',
  /** The activity log ends inside its header or its snapshot. */
  LOG_TRUNCATED: 'BM_ERR_LOG_TRUNCATED',
  /** The activity log has a format version this build does not read. */
  LOG_VERSION: 'BM_ERR_LOG_VERSION',
  /** The activity log fails its checksums or its records do not fit together. */
  LOG_CORRUPT: 'BM_ERR_LOG_CORRUPT',
  /** The activity log is for another image size, or extents that do not fit the bitmap. */
  LOG_GEOMETRY: 'BM_ERR_LOG_GEOMETRY',
  /** The directory holds no job state (no state.json). */
  STATE_MISSING: 'BM_ERR_STATE_MISSING',
  /** state.json is not blockmirror job state, or its fields do not make sense. */
  STATE_CORRUPT: 'BM_ERR_STATE_CORRUPT',
  /** state.json is from a format version this build does not read. */
  STATE_VERSION: 'BM_ERR_STATE_VERSION',
  /** The state's parts disagree with each other or with the images (another size, another moment). */
  STATE_MISMATCH: 'BM_ERR_STATE_MISMATCH',
  /** The directory already holds the state of a job (start it with resume instead). */
  STATE_EXISTS: 'BM_ERR_STATE_EXISTS',
  /** Another live process is running the job of this state directory. */
  STATE_IN_USE: 'BM_ERR_STATE_IN_USE',
  /** A control socket (a replica's, a daemon's QMP monitor) could not be reached, or went away, or did not answer in time. */
  CONTROL_CONNECTION: 'BM_ERR_CONTROL_CONNECTION',
  /** A command on a control socket got an error reply. */
  CONTROL_REPLY: 'BM_ERR_CONTROL_REPLY',
  /** A job verb was used in a state that does not allow it. */
  JOB_STATE: 'BM_ERR_JOB_STATE',
  /** The job failed (its error policy was `report`); `cause` holds the I/O error. */
  JOB_FAILED: 'BM_ERR_JOB_FAILED',
  /** The NBD peer broke the protocol. */
  NBD_PROTOCOL: 'BM_ERR_NBD_PROTOCOL',
  /** The NBD connection could not be made or was lost. */
  NBD_CONNECTION: 'BM_ERR_NBD_CONNECTION',
  /** The NBD server has no export of that name. */
  NBD_NO_EXPORT: 'BM_ERR_NBD_NO_EXPORT',
  /** The NBD peer lacks a feature blockmirror needs. */
  NBD_UNSUPPORTED: 'BM_ERR_NBD_UNSUPPORTED',
} as const;

/** One of the stable error codes in {@link ErrorCode}. */
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Options every blockmirror error accepts. */
export interface BlockmirrorErrorOptions {
  /** The underlying error (a Node.js system error, say). */
  cause?: unknown;
}

/** Base class of every error blockmirror throws on purpose. */
export class BlockmirrorError extends Error {
  /** Stable, documented code: branch on this. */
  readonly code: ErrorCodeValue;

  constructor(code: ErrorCodeValue, message: string, options: BlockmirrorErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
  }
}

/** A bad option, argument or URI: the caller's input is wrong; nothing was touched. */
export class InvalidArgumentError extends BlockmirrorError {}

/** A source or target that cannot be used as asked: missing, a directory, too small, the same file. */
export class DeviceError extends BlockmirrorError {
  /** The path or URI the error is about. */
  readonly path: string;
  constructor(code: ErrorCodeValue, path: string, message: string, options: BlockmirrorErrorOptions = {}) {
    super(code, message, options);
    this.path = path;
  }
}

/** Which side of a copy an I/O error happened on, and doing what. */
export type IoOperation = 'read' | 'write' | 'flush' | 'discard' | 'open' | 'truncate';

/** A read, write or flush that failed. */
export class IoError extends BlockmirrorError {
  /** The errno name (`EIO`, `ENOSPC`...), or `EUNKNOWN`. */
  readonly errno: string;
  readonly operation: IoOperation;
  /** Byte offset of the failed request, where there was one. */
  readonly offset: number | undefined;
  readonly length: number | undefined;
  constructor(
    errno: string,
    operation: IoOperation,
    message: string,
    details: { offset?: number; length?: number; cause?: unknown } = {},
  ) {
    super(ErrorCode.IO, message, { cause: details.cause });
    this.errno = errno;
    this.operation = operation;
    this.offset = details.offset;
    this.length = details.length;
  }
}

/** How far an aborted operation got. */
export interface AbortProgress {
  readonly bytesDone: number;
  readonly bytesTotal: number;
}

/** The operation was aborted through its AbortSignal. */
export class AbortError extends BlockmirrorError {
  /** How far it got, where that is known. */
  readonly progress: AbortProgress | undefined;
  constructor(message = 'the operation was aborted', options: BlockmirrorErrorOptions & { progress?: AbortProgress } = {}) {
    super(ErrorCode.ABORTED, message, options);
    this.progress = options.progress;
  }
}

/** A persistent bitmap file that cannot be loaded, or bitmaps of different geometry. */
export class BitmapError extends BlockmirrorError {}

/**
 * Job state on disk (a state directory, its activity log) that cannot be used: missing, damaged,
 * foreign, from another moment or image. Never resumed silently from: `hint` says the way back.
 */
export class StateError extends BlockmirrorError {
  /** What to do instead, for people (blockmirror verify, usually). */
  readonly hint: string;
  constructor(code: ErrorCodeValue, message: string, hint: string = STATE_HINT, options: BlockmirrorErrorOptions = {}) {
    super(code, `${message}; ${hint}`, options);
    this.hint = hint;
  }
}

/** The way back when job state cannot be trusted. */
export const STATE_HINT =
  'to find what differs without it, run `blockmirror verify SOURCE TARGET --bitmap FILE`, then repair with `blockmirror mirror SOURCE TARGET --sync bitmap --bitmap FILE`';

/** A job verb used in the wrong state, or a failed job. */
export class JobError extends BlockmirrorError {}

/** An NBD protocol or connection failure. */
export class NbdError extends BlockmirrorError {}

/** The errno name of an {@link IoError} or a Node.js system error, or `EUNKNOWN`. */
export function errnoOf(err: unknown): string {
  if (err instanceof IoError) return err.errno;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : 'EUNKNOWN';
}

/** Wraps any error from an I/O call as an {@link IoError}, keeping one that already is. */
export function toIoError(err: unknown, operation: IoOperation, where: string, offset?: number, length?: number): IoError {
  if (err instanceof IoError) return err;
  const errno = errnoOf(err);
  const at = offset === undefined ? '' : ` at offset ${offset}`;
  const reason = err instanceof Error ? err.message : String(err);
  return new IoError(errno, operation, `${operation} failed on ${where}${at}: ${reason}`, { offset, length, cause: err });
}

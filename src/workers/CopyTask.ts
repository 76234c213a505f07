import type { DeviceSpec } from '../io/BlockDevice.js';

/**
 * One message to a copy worker: a batch of extents, since each task that crosses threads costs
 * about 10 µs. Plain data only (it is structured-cloned).
 */
export interface CopyTask {
  readonly source: DeviceSpec;
  readonly target: DeviceSpec;
  /** Extents to copy, flat: offset, length, offset, length... Each is at most one chunk. */
  readonly extents: readonly number[];
  /** Look for all-zero chunks (off: every chunk is written as data). */
  readonly detectZeroes: boolean;
  /** The target is known to read as zeros over these extents (a fresh file): a zero chunk is skipped unseen. */
  readonly targetIsZero: boolean;
  /**
   * Copy the extents one after another, in order (a stream), instead of all at once. A bulk copy
   * of files runs its queue depth as that many streams over separate regions: the kernel's
   * readahead then serves each stream's next read (see docs/perf.md, "Bulk copy").
   */
  readonly sequential?: boolean;
  /**
   * Zero detection looks at pieces of this many bytes of each extent rather than the whole of
   * it: a bulk copy's O_DIRECT phases move large extents (fewer, cheaper requests), yet keep the
   * target as sparse as the chunk size says. Unset: the whole extent is one piece.
   */
  readonly zeroGranule?: number;
  /**
   * A flag shared with the coordinator (one Int32 over a SharedArrayBuffer): once it is set, a
   * stream (`sequential`) copies no further extents. A bulk copy sets it to cut short a trial
   * that is already hopelessly slower than another plan.
   */
  readonly cancel?: Int32Array;
  /**
   * A stream (`sequential`) stops after its first extent that reads all zeros, reporting the rest
   * in `stoppedAt`: a bulk copy reads the data of a hole-scanned source through the page cache,
   * and its holes are better scanned with O_DIRECT (through the cache they fill it with zeros).
   */
  readonly stopAtZero?: boolean;
  /**
   * A stream (`sequential`) stops after its first extent that holds data, reporting the rest in
   * `stoppedAt`: a bulk copy's hole scan hands the data on to requests shaped for data.
   */
  readonly stopAtData?: boolean;
  /** @internal Tests of the stress test only: pause between each read and its write (see util/preemption.ts). */
  readonly preemptAfterRead?: boolean;
}

/** An extent of a task that failed; the others in the task still ran. */
export interface CopyFailure {
  /** Which extent of the task (0-based). */
  readonly index: number;
  readonly operation: 'read' | 'write';
  /** errno name (`EIO`, `ENOSPC`...). */
  readonly errno: string;
  readonly message: string;
}

/** What a copy worker reports for a task. */
export interface CopyTaskResult {
  /** Bytes written to the target as data or zeroes. */
  readonly bytesWritten: number;
  /** Bytes of all-zero chunks (skipped, or zeroed without moving data). */
  readonly bytesZero: number;
  /** Per extent: microseconds the source read took (NaN where it did not run). */
  readonly readMicros: Float64Array;
  /** Per extent: microseconds the target write took (0 where nothing was written, NaN where it did not run). */
  readonly writeMicros: Float64Array;
  readonly failures: readonly CopyFailure[];
  /** Set when `cancel`, `stopAtZero` or `stopAtData` stopped the stream: the extents from this index on were not touched. */
  readonly stoppedAt?: number;
  /** `stopAtData` stopped it. */
  readonly stoppedAtData?: boolean;
}

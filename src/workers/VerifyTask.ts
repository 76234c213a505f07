import type { DeviceRole, DeviceSpec } from '../io/BlockDevice.js';

/**
 * One message to a verify worker: a batch of extents to read on both sides and compare. Plain
 * data only (it is structured-cloned).
 */
export interface VerifyTask {
  readonly source: DeviceSpec;
  readonly target: DeviceSpec;
  /** Extents to compare, flat: offset, length, offset, length... Each is at most one chunk. */
  readonly extents: readonly number[];
  /** Bytes per granule: a differing extent is reported as the granules (aligned to this) it touches. */
  readonly granularity: number;
}

/** An extent of a task that could not be read; the others in the task were still compared. */
export interface VerifyFailure {
  /** Which extent of the task (0-based). */
  readonly index: number;
  /** The side whose read failed. */
  readonly side: DeviceRole;
  /** errno name (`EIO`...). */
  readonly errno: string;
  readonly message: string;
}

/** What a verify worker reports for a task. */
export interface VerifyTaskResult {
  /**
   * The differing granules, coalesced, flat: offset, length... Each run is clipped to the extent
   * it was found in (a granule larger than the chunk shows up as its part in that chunk).
   */
  readonly differing: readonly number[];
  readonly failures: readonly VerifyFailure[];
}

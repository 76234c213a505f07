import { join } from 'node:path';
import { loadBitmap } from '../bitmap/BitmapFile.js';
import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { BlockmirrorError, ErrorCode, IoError, StateError } from '../errors.js';
import { readActivityLog, type ActivityLogContents } from './ActivityLogFile.js';
import { ownerIsAlive, readJobState, StateFiles, type JobStateRecord } from './JobStateFile.js';

/** A state directory read back: what the job was doing, and what a resume must copy. */
export interface RecoveredJobState {
  readonly state: JobStateRecord;
  /** The job's process is alive: the figures are a live estimate, and it cannot be resumed. */
  readonly running: boolean;
  /** Every block that may differ: the saved bitmap ∪ the log's extents (none once pivoted). */
  readonly bitmap: DirtyBitmap | undefined;
  /** Generation of the bitmap file. */
  readonly generation: number;
  /** Bytes dirty in the saved bitmap. */
  readonly bitmapBytes: number;
  /** Extents the activity log names, and the bytes they cover. */
  readonly logExtents: number;
  readonly logBytes: number;
  /** Bytes a resume copies: the union of the two. */
  readonly leftBytes: number;
  /** The log's last record was cut short (power loss during an append); it was not needed. */
  readonly tornTail: boolean;
}

/** Loads a file of the state, keeping its error's stable code and adding where it is and what to do. */
async function part<T>(dir: string, what: string, load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (err) {
    if (err instanceof StateError) throw err;
    if (err instanceof IoError && err.errno === 'ENOENT') {
      throw new StateError(ErrorCode.STATE_CORRUPT, `${dir}: the job's ${what} is missing`, undefined, { cause: err });
    }
    if (err instanceof BlockmirrorError) throw new StateError(err.code, `${dir}: the job's ${what}: ${err.message}`, undefined, { cause: err });
    throw err;
  }
}

function mismatch(dir: string, message: string): StateError {
  return new StateError(ErrorCode.STATE_MISMATCH, `${dir}: ${message}`);
}

/**
 * Reads a state directory after any crash (or while its job runs): which image is current and
 * what is left to copy. Everything is checked: a damaged, truncated or foreign part, or parts
 * from different moments or images, is a {@link StateError} with a stable code, never a silent
 * full or empty result.
 */
export async function recoverJobState(dir: string): Promise<RecoveredJobState> {
  const state = await readJobState(dir);
  const running = await ownerIsAlive(state.owner);
  if (state.phase === 'pivoted') {
    return { state, running, bitmap: undefined, generation: 0, bitmapBytes: 0, logExtents: 0, logBytes: 0, leftBytes: 0, tornTail: false };
  }
  const loaded = await part(dir, 'bitmap', () =>
    loadBitmap(join(dir, StateFiles.bitmap), { size: state.size, granularity: state.granularity, trustInUse: true }),
  );
  const log: ActivityLogContents = await part(dir, 'activity log', () => readActivityLog(join(dir, StateFiles.log)));
  const { header } = log;
  if (header.size !== state.size || header.extentSize !== state.extentSize) {
    throw mismatch(dir, `the activity log is for ${header.size} bytes in ${header.extentSize}-byte extents; the job is ${state.size} in ${state.extentSize}`);
  }
  const generation = loaded.header.generation;
  // The log is rewritten just after each bitmap save: it may be one generation behind, never ahead.
  if (header.epoch !== generation && header.epoch !== generation - 1) {
    throw mismatch(dir, `the activity log goes with bitmap generation ${header.epoch}, the bitmap file is generation ${generation}: they are from different moments`);
  }
  const bitmap = loaded.bitmap;
  const bitmapBytes = bitmap.dirtyBytes();
  let logBytes = 0;
  for (const e of log.extents) {
    const offset = e * header.extentSize;
    const length = Math.min(header.extentSize, state.size - offset);
    bitmap.mark(offset, length);
    logBytes += length;
  }
  return {
    state,
    running,
    bitmap,
    generation,
    bitmapBytes,
    logExtents: log.extents.length,
    logBytes,
    leftBytes: bitmap.dirtyBytes(),
    tornTail: log.tornTail,
  };
}

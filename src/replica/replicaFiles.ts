import { basename, dirname, join, resolve } from 'node:path';
import { ErrorCode, InvalidArgumentError } from '../errors.js';
import { isNbdUri } from '../io/nbd/NbdUri.js';

/** The files a replica keeps for its disk. */
export interface ReplicaFiles {
  /** The replica state (JSON, replaced atomically): geometry, state, last checkpoint, owner. */
  readonly state: string;
  /** The checkpoint buffer: a sparse file of the disk's size holding old contents at their offsets. */
  readonly buffer: string;
  /** The saved-granule log (the activity log's format). */
  readonly log: string;
  /** A running drill's snapshot and overlay scratch files, and its default Unix socket. */
  readonly drillSnapshot: string;
  readonly drillOverlay: string;
  readonly drillSocket: string;
}

/**
 * Where a replica of `disk` keeps its files: next to the disk (`DISK.replica-state`,
 * `DISK.replica-buffer`, `DISK.replica-log`), or in `stateDir` under the disk's file name. A
 * disk given as an NBD URI has no "next to": it needs `stateDir`.
 */
export function replicaFilesFor(disk: string, stateDir?: string): ReplicaFiles {
  let prefix: string;
  if (stateDir !== undefined) prefix = join(resolve(stateDir), isNbdUri(disk) ? 'nbd-disk' : basename(disk));
  else if (isNbdUri(disk)) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `a replica of an NBD export (${disk.slice(0, 200)}) needs a state directory for its buffer and log (--state DIR)`);
  } else prefix = join(dirname(resolve(disk)), basename(disk));
  return {
    state: `${prefix}.replica-state`,
    buffer: `${prefix}.replica-buffer`,
    log: `${prefix}.replica-log`,
    drillSnapshot: `${prefix}.replica-drill-snapshot`,
    drillOverlay: `${prefix}.replica-drill-overlay`,
    drillSocket: `${prefix}.replica-drill.sock`,
  };
}

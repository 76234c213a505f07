import { open, unlink } from 'node:fs/promises';
import { ErrorCode, InvalidArgumentError, StateError, errnoOf } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { FileDevice } from '../io/FileDevice.js';
import { currentOwner } from '../state/JobStateFile.js';
import { CheckpointBuffer, DEFAULT_REPLICA_GRANULARITY, type CheckpointBufferOptions } from './CheckpointBuffer.js';
import type { ReplicaFiles } from './replicaFiles.js';
import { REPLICA_STATE_FORMAT, REPLICA_STATE_VERSION, type ReplicaStateRecord } from './ReplicaStateFile.js';

/** What {@link openReplicaState} needs to know of the start. */
export interface ReplicaStartOptions {
  /** The disk as given (for messages and a new state file). */
  readonly disk: string;
  /** The granularity asked for, if any. */
  readonly granularity?: number;
}

/**
 * The buffer and state record a start goes on with: new ones (no state file), recovered ones
 * (the log's interval must be the state file's checkpoint, or the pending one, which then is),
 * or no buffer (failed over).
 */
export async function openReplicaState(
  o: ReplicaStartOptions,
  files: ReplicaFiles,
  disk: BlockDevice,
  found: ReplicaStateRecord | undefined,
): Promise<{ buffer: CheckpointBuffer | undefined; record: ReplicaStateRecord }> {
  if (disk.size === 0) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${o.disk} is empty: there is nothing to replicate`);
  if (found) {
    if (found.size !== disk.size) {
      throw new StateError(ErrorCode.STATE_MISMATCH, `${files.state}: the replica is of a ${found.size}-byte disk; ${o.disk} has ${disk.size} bytes`);
    }
    if (o.granularity !== undefined && o.granularity !== found.granularity) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `granularity ${o.granularity}: the replica in ${files.state} has granularity ${found.granularity} (leave the option out to keep it)`);
    }
  }
  if (found?.state === 'failed-over') {
    await removeBufferFiles(files); // left by a crash just after the failover committed
    return { buffer: undefined, record: found };
  }
  const granularity = found?.granularity ?? o.granularity ?? DEFAULT_REPLICA_GRANULARITY;
  const bufferOptions = async (): Promise<CheckpointBufferOptions> => ({ disk, buffer: await openBufferFile(files.buffer), logPath: files.log, granularity });
  if (!found) {
    // A new replica: nothing was served before the state file exists, so leftover files mean nothing.
    const buffer = await CheckpointBuffer.create(await bufferOptions(), 0);
    const record: ReplicaStateRecord = {
      format: REPLICA_STATE_FORMAT,
      version: REPLICA_STATE_VERSION,
      disk: o.disk,
      size: disk.size,
      granularity,
      state: 'replicating',
      checkpoint: { interval: 0, id: null, time: new Date().toISOString() },
      owner: await currentOwner(),
      updated: new Date().toISOString(),
    };
    return { buffer, record };
  }
  let buffer: CheckpointBuffer;
  try {
    buffer = await CheckpointBuffer.recover(await bufferOptions());
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') {
      throw new StateError(ErrorCode.STATE_CORRUPT, `${files.log} is missing: which granules of ${o.disk} changed since the checkpoint is unknown`, 'take a new full copy from the primary into a new replica', { cause: err });
    }
    throw err;
  }
  let record = found;
  if (buffer.interval === found.pending?.interval) record = { ...found, checkpoint: found.pending, pending: undefined };
  else if (buffer.interval !== found.checkpoint.interval) {
    await buffer.close();
    throw new StateError(
      ErrorCode.STATE_MISMATCH,
      `${files.log} holds checkpoint interval ${buffer.interval}; ${files.state} names interval ${found.checkpoint.interval}${found.pending ? ` (or ${found.pending.interval})` : ''}`,
      'take a new full copy from the primary into a new replica',
    );
  }
  return { buffer, record };
}

/** Opens (creating if need be) the buffer file. */
async function openBufferFile(path: string): Promise<FileDevice> {
  await (await open(path, 'a')).close();
  return FileDevice.open({ kind: 'file', path, writable: true, role: 'target' });
}

export async function removeBufferFiles(files: ReplicaFiles): Promise<void> {
  await Promise.all([unlink(files.buffer).catch(() => {}), unlink(files.log).catch(() => {})]);
}

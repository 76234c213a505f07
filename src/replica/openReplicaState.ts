import { open, unlink } from 'node:fs/promises';
import { ErrorCode, InvalidArgumentError, StateError, errnoOf } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { FileDevice } from '../io/FileDevice.js';
import { bootId, currentOwner } from '../state/JobStateFile.js';
import { CheckpointBuffer, DEFAULT_REPLICA_GRANULARITY, type CheckpointBufferOptions, type ReplicaDurability } from './CheckpointBuffer.js';
import type { ReplicaFiles } from './replicaFiles.js';
import { REPLICA_STATE_FORMAT, untrustedCheckpoint, type ReplicaStateRecord, type ReplicaUntrustedRecord } from './ReplicaStateFile.js';

/** What {@link openReplicaState} needs to know of the start. */
export interface ReplicaStartOptions {
  /** The disk as given (for messages and a new state file). */
  readonly disk: string;
  /** The granularity asked for, if any. */
  readonly granularity?: number;
  /** The durability mode of this run (default `power`). */
  readonly durability?: ReplicaDurability;
}

/**
 * The buffer and state record a start goes on with: new ones (no state file), recovered ones
 * (the log's interval must be the state file's checkpoint, or the pending one, which then is),
 * or no buffer (failed over).
 *
 * A recovered record says this run's durability mode and boot. If the state file said a
 * `process`-mode run on another boot (or on an unknown one), the interval's buffer is marked
 * untrusted (see {@link ReplicaStateRecord.untrusted}); a mark on the current interval stays.
 * The buffer file and the log are fdatasync'ed first, so that a record saying `power` (or this
 * boot) is never written while a previous run's `process`-mode writes are still only cached.
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
  const durability = o.durability ?? 'power';
  const bufferOptions = async (): Promise<CheckpointBufferOptions> => ({ disk, buffer: await openBufferFile(files.buffer), logPath: files.log, granularity, durability });
  if (!found) {
    // A new replica: nothing was served before the state file exists, so leftover files mean nothing.
    const buffer = await CheckpointBuffer.create(await bufferOptions(), 0);
    const record: ReplicaStateRecord = {
      format: REPLICA_STATE_FORMAT,
      version: 1,
      disk: o.disk,
      size: disk.size,
      granularity,
      state: 'replicating',
      checkpoint: { interval: 0, id: null, time: new Date().toISOString() },
      durability: { mode: durability, bootId: await bootId() },
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
  try {
    const boot = await bootId();
    const untrusted = untrustedCheckpoint(record) ?? distrust(record, boot);
    await buffer.sync();
    record = { ...record, durability: { mode: durability, bootId: boot }, untrusted };
  } catch (err) {
    await buffer.close().catch(() => {});
    throw err;
  }
  return { buffer, record };
}

/**
 * The mark a recovered interval gets when its buffer cannot be vouched for: the run that last
 * wrote it was in `process` mode on another boot (or one whose id is unknown), so a power loss
 * or kernel crash may have lost buffer data or records while the disk writes over them stayed.
 */
function distrust(record: ReplicaStateRecord, boot: string): ReplicaUntrustedRecord | undefined {
  const d = record.durability;
  if (d?.mode !== 'process') return undefined;
  if (d.bootId !== '' && d.bootId === boot) return undefined;
  const which = d.bootId === '' || boot === '' ? 'a boot whose id the kernel did not give' : `another boot (${d.bootId}; this one is ${boot})`;
  return {
    interval: record.checkpoint.interval,
    reason: `the replica last ran with durability 'process' on ${which}: a power loss or kernel crash may have lost checkpoint-buffer data or records whose disk writes were kept`,
    since: new Date().toISOString(),
  };
}

/** Opens (creating if need be) the buffer file. */
async function openBufferFile(path: string): Promise<FileDevice> {
  await (await open(path, 'a')).close();
  return FileDevice.open({ kind: 'file', path, writable: true, role: 'target' });
}

export async function removeBufferFiles(files: ReplicaFiles): Promise<void> {
  await Promise.all([unlink(files.buffer).catch(() => {}), unlink(files.log).catch(() => {})]);
}

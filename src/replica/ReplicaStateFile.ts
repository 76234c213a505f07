import { randomBytes } from 'node:crypto';
import { open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ErrorCode, StateError, toIoError } from '../errors.js';
import type { JobOwner } from '../state/JobStateFile.js';
import { syncDirectory } from '../util/syncDirectory.js';

/** `format` of every replica state file. */
export const REPLICA_STATE_FORMAT = 'blockmirror-replica-state';
/** The replica state version this build writes and reads. */
export const REPLICA_STATE_VERSION = 1;

/** Whether the disk still receives the primary's writes under copy-before-write, or is a primary itself. */
export type ReplicaState = 'replicating' | 'failed-over';

/** Where `failover` put the disk. */
export type FailoverTarget = 'checkpoint' | 'latest';

/** A checkpoint as the state file names it. */
export interface ReplicaCheckpointRecord {
  /** The checkpoint interval that starts here: the saved-granule log's epoch. */
  readonly interval: number;
  /** The id the primary gave it; null for the point where the replica first started. */
  readonly id: number | null;
  /** ISO time it was taken. */
  readonly time: string;
}

/** What the replica state file holds. */
export interface ReplicaStateRecord {
  readonly format: typeof REPLICA_STATE_FORMAT;
  readonly version: typeof REPLICA_STATE_VERSION;
  /** The disk as given. */
  readonly disk: string;
  readonly size: number;
  readonly granularity: number;
  readonly state: ReplicaState;
  /** The last committed checkpoint. */
  readonly checkpoint: ReplicaCheckpointRecord;
  /**
   * A checkpoint being taken: written before its commit (the log replaced for its interval), so
   * that whichever interval the log holds after a crash, its name is known.
   */
  readonly pending?: ReplicaCheckpointRecord;
  /** Set once failed over. */
  readonly failover?: { readonly to: FailoverTarget; readonly time: string; readonly restoredBytes: number };
  /** The process that runs the replica. */
  readonly owner: JobOwner;
  /** ISO time of the last update. */
  readonly updated: string;
}

function corrupt(path: string, message: string): StateError {
  return new StateError(ErrorCode.STATE_CORRUPT, `${path}: ${message}`);
}

function isCheckpoint(v: unknown): v is ReplicaCheckpointRecord {
  const c = v as Record<string, unknown> | null;
  return (
    typeof c === 'object' &&
    c !== null &&
    Number.isSafeInteger(c.interval) &&
    (c.interval as number) >= 0 &&
    (c.id === null || (Number.isSafeInteger(c.id) && (c.id as number) >= 0)) &&
    typeof c.time === 'string'
  );
}

function checkRecord(v: unknown, path: string): ReplicaStateRecord {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(path, 'not a JSON object');
  const r = v as Record<string, unknown>;
  if (r.format !== REPLICA_STATE_FORMAT) throw corrupt(path, `not blockmirror replica state (format ${JSON.stringify(r.format) ?? 'missing'})`);
  if (r.version !== REPLICA_STATE_VERSION) {
    throw new StateError(ErrorCode.STATE_VERSION, `${path}: replica state version ${String(r.version)}; this build reads version ${REPLICA_STATE_VERSION}`);
  }
  const owner = r.owner as Record<string, unknown> | undefined;
  const problems: Array<[boolean, string]> = [
    [typeof r.disk === 'string', 'disk'],
    [Number.isSafeInteger(r.size) && (r.size as number) > 0, 'size'],
    [Number.isSafeInteger(r.granularity) && (r.granularity as number) > 0, 'granularity'],
    [r.state === 'replicating' || r.state === 'failed-over', 'state'],
    [isCheckpoint(r.checkpoint), 'checkpoint'],
    [r.pending === undefined || isCheckpoint(r.pending), 'pending'],
    [typeof owner === 'object' && owner !== null && typeof owner.pid === 'number' && typeof owner.host === 'string' && typeof owner.bootId === 'string', 'owner'],
    [typeof r.updated === 'string', 'updated'],
  ];
  const bad = problems.find(([ok]) => !ok);
  if (bad) throw corrupt(path, `field '${bad[1]}' is missing or wrong`);
  return r as unknown as ReplicaStateRecord;
}

/** Reads and checks a replica state file; undefined when there is none (a replica never started). */
export async function readReplicaState(path: string): Promise<ReplicaStateRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return undefined;
    throw toIoError(err, 'read', path);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw corrupt(path, text.trim() === '' ? 'the file is empty' : 'not valid JSON (cut short or damaged)');
  }
  return checkRecord(parsed, path);
}

/** Replaces the state file atomically and durably (temporary file, fsync, rename, directory fsync). */
export async function writeReplicaState(path: string, record: ReplicaStateRecord): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(temp, `${JSON.stringify(record, null, 2)}\n`, { flag: 'wx' });
    const fh = await open(temp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw toIoError(err, 'write', path);
  }
  await syncDirectory(dir);
}

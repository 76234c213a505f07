import { readFile } from 'node:fs/promises';
import { ErrorCode, StateError, toIoError } from '../errors.js';
import type { JobOwner } from '../state/JobStateFile.js';
import { REPLICA_DURABILITIES, type ReplicaDurability } from './SavedGranuleLog.js';
import { writeFileAtomic } from '../util/writeFileAtomic.js';

/** `format` of every replica state file. */
export const REPLICA_STATE_FORMAT = 'blockmirror-replica-state';
/**
 * The newest replica state version, which this build writes when a record needs it: a record
 * with `durability.mode` 'process' or with `untrusted` is version 2, so that an older build (which
 * reads version 1 only, and knows neither field) refuses it rather than trusting the buffer;
 * any other record is written as version 1, which every build reads the same way.
 * This build reads both (version 1 files have neither field: power mode, trusted).
 */
export const REPLICA_STATE_VERSION = 2;
/** The versions this build reads. */
const READABLE_VERSIONS: readonly number[] = [1, 2];

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

/** {@link ReplicaStateRecord.durability}. */
export interface ReplicaDurabilityRecord {
  readonly mode: ReplicaDurability;
  /** The kernel's boot id when the owner started ('' where the kernel does not say). */
  readonly bootId: string;
}

/** {@link ReplicaStateRecord.untrusted}. */
export interface ReplicaUntrustedRecord {
  /** The checkpoint interval whose buffer cannot be vouched for. */
  readonly interval: number;
  /** Why, for query-replica and the failover refusal. */
  readonly reason: string;
  /** ISO time it was found. */
  readonly since: string;
}

/** The untrusted mark that applies to `record`'s checkpoint, if any (one of an older interval is spent). */
export function untrustedCheckpoint(record: ReplicaStateRecord): ReplicaUntrustedRecord | undefined {
  return record.untrusted?.interval === record.checkpoint.interval ? record.untrusted : undefined;
}

/** What the replica state file holds. */
export interface ReplicaStateRecord {
  readonly format: typeof REPLICA_STATE_FORMAT;
  /** 1 or 2; {@link writeReplicaState} sets it from the record (see {@link REPLICA_STATE_VERSION}). */
  readonly version: 1 | 2;
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
  /**
   * How the owner writes the buffer and log, and the boot it runs on (written before it serves a
   * write). With `process`, its saves since the last sync survive only as long as that boot's
   * page cache: a start on another boot cannot vouch for the buffer. Absent: `power`.
   */
  readonly durability?: ReplicaDurabilityRecord;
  /**
   * Set when the buffer of checkpoint interval `interval` cannot be vouched for (a `process`-mode
   * replica found after a reboot): failover to the checkpoint is refused while the checkpoint's
   * interval is this one, that is until a checkpoint commits a new interval.
   */
  readonly untrusted?: ReplicaUntrustedRecord;
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
  if (!READABLE_VERSIONS.includes(r.version as number)) {
    throw new StateError(ErrorCode.STATE_VERSION, `${path}: replica state version ${String(r.version)}; this build reads versions ${READABLE_VERSIONS.join(' and ')}`);
  }
  const owner = r.owner as Record<string, unknown> | undefined;
  const durability = r.durability as Record<string, unknown> | undefined;
  const untrusted = r.untrusted as Record<string, unknown> | undefined;
  const problems: Array<[boolean, string]> = [
    [typeof r.disk === 'string', 'disk'],
    [Number.isSafeInteger(r.size) && (r.size as number) > 0, 'size'],
    [Number.isSafeInteger(r.granularity) && (r.granularity as number) > 0, 'granularity'],
    [r.state === 'replicating' || r.state === 'failed-over', 'state'],
    [isCheckpoint(r.checkpoint), 'checkpoint'],
    [r.pending === undefined || isCheckpoint(r.pending), 'pending'],
    [
      durability === undefined ||
        (typeof durability === 'object' && durability !== null && REPLICA_DURABILITIES.includes(durability.mode as ReplicaDurability) && typeof durability.bootId === 'string'),
      'durability',
    ],
    [
      untrusted === undefined ||
        (typeof untrusted === 'object' &&
          untrusted !== null &&
          Number.isSafeInteger(untrusted.interval) &&
          typeof untrusted.reason === 'string' &&
          typeof untrusted.since === 'string'),
      'untrusted',
    ],
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

/**
 * Replaces the state file atomically and durably (temporary file, fsync, rename, directory fsync),
 * as version 2 when the record needs it, else version 1 (see {@link REPLICA_STATE_VERSION}).
 */
export async function writeReplicaState(path: string, given: ReplicaStateRecord): Promise<void> {
  const version = given.durability?.mode === 'process' || given.untrusted !== undefined ? 2 : 1;
  const record: ReplicaStateRecord = { ...given, version };
  await writeFileAtomic(path, [Buffer.from(`${JSON.stringify(record, null, 2)}\n`)]);
}

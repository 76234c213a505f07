import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { ErrorCode, StateError, toIoError } from '../errors.js';
import type { DeviceSpec } from '../io/BlockDevice.js';
import { writeFileAtomic } from '../util/writeFileAtomic.js';

/** The files of a state directory. */
export const StateFiles = {
  /** The job: images, geometry, phase, owner (JSON, replaced atomically). */
  state: 'state.json',
  /** The dirty bitmap (docs/bitmap-format.md), saved at every checkpoint. */
  bitmap: 'dirty.bmp',
  /** The activity log (docs/activity-log.md). */
  log: 'activity.log',
} as const;

/** `format` of every state.json. */
export const JOB_STATE_FORMAT = 'blockmirror-job-state';
/** The state.json version this build writes and reads. */
export const JOB_STATE_VERSION = 1;

/**
 * Where a job is. `copying`, `ready` and `completing`: the source is current; `pivoted`: the
 * target is (writes go there); `stopped`: the job ended without a pivot (cancelled or failed), the
 * source is current, and the bitmap says what the target lacks.
 */
export type JobPhase = 'copying' | 'ready' | 'completing' | 'pivoted' | 'stopped';
const PHASES: readonly JobPhase[] = ['copying', 'ready', 'completing', 'pivoted', 'stopped'];

/** The process that runs the job. */
export interface JobOwner {
  readonly pid: number;
  readonly host: string;
  /** The kernel's boot id: a pid from another boot is not this process. */
  readonly bootId: string;
}

/** What state.json holds. */
export interface JobStateRecord {
  readonly format: typeof JOB_STATE_FORMAT;
  readonly version: typeof JOB_STATE_VERSION;
  readonly id: string;
  /** The source and target as given (a path, a URI, or a device spec). */
  readonly source: string | DeviceSpec;
  readonly target: string | DeviceSpec;
  readonly size: number;
  readonly granularity: number;
  readonly extentSize: number;
  readonly phase: JobPhase;
  /** Which image holds the latest data: the target only once pivoted. */
  readonly current: 'source' | 'target';
  /** With `stopped`: whether the target was a consistent copy when the job ended. */
  readonly consistent: boolean;
  readonly owner: JobOwner;
  /** ISO time of the last update. */
  readonly updated: string;
}

let bootIdCache: string | undefined;

/** This boot's id (empty where the kernel does not say). */
export async function bootId(): Promise<string> {
  bootIdCache ??= await readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((s) => s.trim(), () => '');
  return bootIdCache;
}

/** This process as a job owner. */
export async function currentOwner(): Promise<JobOwner> {
  return { pid: process.pid, host: hostname(), bootId: await bootId() };
}

/** True when `owner` is a live process other than this one (so the job is running elsewhere). */
export async function ownerIsAlive(owner: JobOwner): Promise<boolean> {
  if (owner.pid === process.pid || owner.host !== hostname() || owner.bootId !== (await bootId())) return false;
  try {
    process.kill(owner.pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'EPERM';
  }
}

function corrupt(dir: string, message: string): StateError {
  return new StateError(ErrorCode.STATE_CORRUPT, `${join(dir, StateFiles.state)}: ${message}`);
}

function isLocation(v: unknown): v is string | DeviceSpec {
  return (typeof v === 'string' && v !== '') || (typeof v === 'object' && v !== null && typeof (v as { kind?: unknown }).kind === 'string');
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}

/** Checks a parsed state.json field by field; the first problem decides the error. */
function checkRecord(v: unknown, dir: string): JobStateRecord {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(dir, 'not a JSON object');
  const r = v as Record<string, unknown>;
  if (r.format !== JOB_STATE_FORMAT) throw corrupt(dir, `not blockmirror job state (format ${JSON.stringify(r.format) ?? 'missing'})`);
  if (r.version !== JOB_STATE_VERSION) {
    throw new StateError(ErrorCode.STATE_VERSION, `${join(dir, StateFiles.state)}: job state version ${String(r.version)}; this build reads version ${JOB_STATE_VERSION}`);
  }
  const owner = r.owner as Record<string, unknown> | undefined;
  const problems: Array<[boolean, string]> = [
    [typeof r.id === 'string', 'id'],
    [isLocation(r.source), 'source'],
    [isLocation(r.target), 'target'],
    [isCount(r.size), 'size'],
    [isCount(r.granularity), 'granularity'],
    [isCount(r.extentSize), 'extentSize'],
    [PHASES.includes(r.phase as JobPhase), 'phase'],
    [r.current === (r.phase === 'pivoted' ? 'target' : 'source'), 'current'],
    [typeof r.consistent === 'boolean', 'consistent'],
    [typeof owner === 'object' && owner !== null && isCount(owner.pid) && typeof owner.host === 'string' && typeof owner.bootId === 'string', 'owner'],
    [typeof r.updated === 'string', 'updated'],
  ];
  const bad = problems.find(([ok]) => !ok);
  if (bad) throw corrupt(dir, `field '${bad[1]}' is missing or wrong`);
  return r as unknown as JobStateRecord;
}

/** Reads and checks `DIR/state.json`: `BM_ERR_STATE_MISSING`, `_CORRUPT` or `_VERSION` when it cannot be used. */
export async function readJobState(dir: string): Promise<JobStateRecord> {
  const path = join(dir, StateFiles.state);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new StateError(ErrorCode.STATE_MISSING, `${dir} holds no blockmirror job state (no ${StateFiles.state})`);
    }
    throw toIoError(err, 'read', path);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw corrupt(dir, text.trim() === '' ? 'the file is empty' : 'not valid JSON (cut short or damaged)');
  }
  return checkRecord(parsed, dir);
}

/** Replaces `DIR/state.json` atomically and durably (temporary file, fsync, rename, directory fsync). */
export async function writeJobState(dir: string, record: JobStateRecord): Promise<void> {
  await writeFileAtomic(join(dir, StateFiles.state), [Buffer.from(`${JSON.stringify(record, null, 2)}\n`)]);
}

import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { saveBitmap } from '../bitmap/BitmapFile.js';
import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { toIoError } from '../errors.js';
import type { DeviceSpec } from '../io/BlockDevice.js';
import { ActivityLog, DEFAULT_LOG_EXTENT_SIZE } from './ActivityLog.js';
import { Checkpointer } from './Checkpointer.js';
import { currentOwner, JOB_STATE_FORMAT, JOB_STATE_VERSION, StateFiles, writeJobState, type JobPhase, type JobStateRecord } from './JobStateFile.js';
import { UnflushedCopies } from './UnflushedCopies.js';

/** What {@link JobStateStore.open} needs. */
export interface JobStateStoreOptions {
  readonly dir: string;
  readonly id: string;
  readonly source: string | DeviceSpec;
  readonly target: string | DeviceSpec;
  /** The job's live bitmap (what is left to copy). */
  readonly bitmap: DirtyBitmap;
  /** Generation of the bitmap file already in `dir` (0: none, a new job). */
  readonly generation: number;
  /** Bytes per activity-log extent (default 4 MiB, at least the bitmap's granularity). */
  readonly extentSize?: number;
  readonly checkpointIntervalMs?: number;
  readonly flushTarget: () => Promise<void>;
  /** A checkpoint failed in the background: the files may no longer cover every write. */
  readonly onError: (err: unknown) => void;
}

/**
 * A job's state directory while the job runs: the bitmap file, the activity log, and state.json
 * with the phase. The job tells it of every phase change; the pivot waits until
 * "pivoted, target current" is durable, so the directory always says which image is current.
 */
export class JobStateStore {
  readonly dir: string;
  readonly log: ActivityLog;
  readonly unflushed: UnflushedCopies;
  readonly #checkpointer: Checkpointer;
  readonly #onError: (err: unknown) => void;
  #record: JobStateRecord;
  /** State writes, one after the other, so an old phase never lands after a newer one. */
  #writes: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(dir: string, log: ActivityLog, unflushed: UnflushedCopies, checkpointer: Checkpointer, record: JobStateRecord, onError: (err: unknown) => void) {
    this.dir = dir;
    this.#onError = onError;
    this.log = log;
    this.unflushed = unflushed;
    this.#checkpointer = checkpointer;
    this.#record = record;
  }

  /**
   * Saves the bitmap as the next generation, starts an empty log for it, then writes state.json
   * (phase `copying`): in this order, a crash at any point leaves a directory that is either not
   * yet a job or recovers to a superset of what is left.
   */
  static async open(o: JobStateStoreOptions): Promise<JobStateStore> {
    await mkdir(o.dir, { recursive: true }).catch((err: unknown) => {
      throw toIoError(err, 'write', o.dir);
    });
    const { bitmap } = o;
    const extentSize = Math.max(o.extentSize ?? DEFAULT_LOG_EXTENT_SIZE, bitmap.granularity);
    const generation = o.generation + 1;
    await saveBitmap(join(o.dir, StateFiles.bitmap), bitmap, { inUse: true, generation });
    const log = await ActivityLog.create(join(o.dir, StateFiles.log), { extentSize, size: bitmap.size, epoch: generation });
    const unflushed = new UnflushedCopies();
    const checkpointer = new Checkpointer({
      bitmap,
      path: join(o.dir, StateFiles.bitmap),
      generation,
      log,
      copies: { unflushed, flushTarget: o.flushTarget },
      intervalMs: o.checkpointIntervalMs,
      onError: o.onError,
    });
    const record: JobStateRecord = {
      format: JOB_STATE_FORMAT,
      version: JOB_STATE_VERSION,
      id: o.id,
      source: o.source,
      target: o.target,
      size: bitmap.size,
      granularity: bitmap.granularity,
      extentSize,
      phase: 'copying',
      current: 'source',
      consistent: false,
      owner: await currentOwner(),
      updated: new Date().toISOString(),
    };
    await writeJobState(o.dir, record);
    const store = new JobStateStore(o.dir, log, unflushed, checkpointer, record, o.onError);
    checkpointer.start();
    return store;
  }

  get phase(): JobPhase {
    return this.#record.phase;
  }

  /**
   * Records a phase; `pivoted` and `stopped` are final, and later phases are ignored. Ready also
   * checkpoints at once: the bitmap is all but empty then, so a crash once in sync resumes with
   * what the writers touched since, not with what was left at the last checkpoint of the copy.
   */
  setPhase(phase: JobPhase, consistent = phase === 'ready' || phase === 'completing' || phase === 'pivoted'): Promise<void> {
    if (phase === 'ready') {
      this.#checkpointer.checkpoint().catch((err: unknown) => {
        if (!this.#closed) this.#onError(err);
      });
    }
    const run = this.#writes.then(async () => {
      const now = this.#record.phase;
      if (now === 'pivoted' || now === 'stopped') return;
      this.#record = {
        ...this.#record,
        phase,
        current: phase === 'pivoted' ? 'target' : 'source',
        consistent,
        updated: new Date().toISOString(),
      };
      await writeJobState(this.dir, this.#record);
    });
    this.#writes = run.catch(() => {});
    return run;
  }

  /**
   * The job has stopped changing the bitmap for good (pivoted), or its last writer is gone:
   * a last checkpoint saves the bitmap clean (unless pivoted), and the files are closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#checkpointer.stop();
    await this.#writes;
    try {
      if (this.#record.phase !== 'pivoted') await this.#checkpointer.checkpoint({ clean: true });
    } finally {
      await this.log.close();
    }
  }
}

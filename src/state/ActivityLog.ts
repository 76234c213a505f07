import { open, type FileHandle } from 'node:fs/promises';
import { toIoError, type IoError } from '../errors.js';
import { GroupCommit } from '../util/GroupCommit.js';
import { encodeRecord, writeActivityLog, type ActivityLogHeader } from './ActivityLogFile.js';

/** Bytes per log extent by default: DRBD's activity-log extent, 4 MiB. */
export const DEFAULT_LOG_EXTENT_SIZE = 4 << 20;
/**
 * Hot extents the log aims to keep at most (DRBD's al-extents default is 1237): 4 GiB of the
 * image at 4 MiB each. Past it the next checkpoint cools every idle extent, not only long-idle ones.
 */
export const DEFAULT_HOT_EXTENTS = 1024;

/** One hot extent: writes in progress, the checkpoint period it was last entered in, and whether its record is durable yet. */
interface HotExtent {
  active: number;
  period: number;
  /** Settles once the record naming this extent is durable; undefined once it is. */
  durable: Promise<void> | undefined;
}

/** Options of {@link ActivityLog.create}. */
export interface ActivityLogOptions extends ActivityLogHeader {
  /** Hot extents to aim for at most (default {@link DEFAULT_HOT_EXTENTS}). */
  readonly capacity?: number;
}

/**
 * The activity log (DRBD's, in spirit): the extents of the image that writes may have touched
 * since the bitmap file was last saved. A write to a cold extent waits, before it is let through,
 * until a record naming the extent is durable (written and fdatasync'ed); writers that arrive
 * meanwhile share the next record, so a burst of new extents costs one sync. A write to a hot
 * extent costs a map lookup. Extents go cold at a checkpoint, once the bitmap file holds their
 * bits: the log file is then rewritten with only the extents still hot.
 *
 * So, after any crash: bits of the last saved bitmap file ∪ the log's extents ⊇ every block that
 * writes may have changed since the job last knew source and target equal there.
 */
export class ActivityLog {
  readonly path: string;
  readonly extentSize: number;
  readonly size: number;
  readonly capacity: number;
  #epoch: number;
  #fh: FileHandle;
  #end: number;
  #seq = 1;
  readonly #hot = new Map<number, HotExtent>();
  /** Checkpoint periods: raised when a checkpoint begins. */
  #period = 0;
  /** Records of extents that became hot, one per batch of writers. */
  readonly #records = new GroupCommit<number>((batch) => this.#commitBatch(batch));
  /** Serializes every change to the file: appends and compactions. */
  #io: Promise<void> = Promise.resolve();
  #failed: IoError | undefined;
  #enters = 0;

  private constructor(path: string, o: ActivityLogOptions, fh: FileHandle, end: number) {
    this.path = path;
    this.extentSize = o.extentSize;
    this.size = o.size;
    this.capacity = o.capacity ?? DEFAULT_HOT_EXTENTS;
    this.#epoch = o.epoch;
    this.#fh = fh;
    this.#end = end;
  }

  /** Starts a new log at `path` (replacing any file there), with no hot extent. */
  static async create(path: string, options: ActivityLogOptions): Promise<ActivityLog> {
    const end = await writeActivityLog(path, options, []);
    const fh = await openForAppend(path);
    return new ActivityLog(path, options, fh, end);
  }

  /** The generation of the bitmap file the log goes with. */
  get epoch(): number {
    return this.#epoch;
  }

  /** Extents hot now. */
  get hotCount(): number {
    return this.#hot.size;
  }

  /** Writes entered so far (a checkpoint with none since the last one has nothing to do). */
  get enters(): number {
    return this.#enters;
  }

  /** The extents hot now, sorted. */
  hotExtents(): number[] {
    return [...this.#hot.keys()].sort((a, b) => a - b);
  }

  /**
   * A write of `length` bytes at `offset` is about to be let through. Returns a promise to wait
   * for when one of its extents is not yet durably logged, else undefined. Every call, also one
   * whose promise rejects, is paired with an {@link exit} once the write has been marked.
   */
  enter(offset: number, length: number): Promise<void> | undefined {
    this.#enters++;
    const first = Math.floor(offset / this.extentSize);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.extentSize);
    let wait: Promise<void> | undefined;
    let waits: Promise<void>[] | undefined;
    for (let e = first; e <= last; e++) {
      let h = this.#hot.get(e);
      if (!h) {
        h = { active: 0, period: this.#period, durable: this.#schedule(e) };
        this.#hot.set(e, h);
      }
      h.active++;
      h.period = this.#period;
      if (h.durable) {
        if (!wait) wait = h.durable;
        else if (h.durable !== wait) (waits ??= [wait]).push(h.durable);
      }
    }
    if (this.#failed) return Promise.reject(this.#failed);
    return waits ? Promise.all(waits).then(() => undefined) : wait;
  }

  /** The write entered with the same range is done, and marked in the bitmap. */
  exit(offset: number, length: number): void {
    const first = Math.floor(offset / this.extentSize);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.extentSize);
    for (let e = first; e <= last; e++) {
      const h = this.#hot.get(e);
      if (h) h.active--;
    }
  }

  /**
   * A checkpoint begins: writes entered from now on count as after it. Returns the new period,
   * to pass to {@link coolable} and {@link compact}.
   */
  beginPeriod(): number {
    return ++this.#period;
  }

  /**
   * Extents that may go cold once the bitmap snapshot taken now is saved: no write in progress,
   * none entered since the checkpoint began. Call it in the same tick as the snapshot. Extents
   * idle for a whole period go first; all idle ones when the log holds more than its capacity,
   * or when `all` (the last checkpoint, once writers have stopped).
   */
  coolable(period: number, all = false): number[] {
    const before = all || this.#hot.size > this.capacity ? period : period - 1;
    const out: number[] = [];
    for (const [e, h] of this.#hot) if (h.active === 0 && h.period < before && !h.durable) out.push(e);
    return out;
  }

  /**
   * The bitmap file of generation `epoch` is saved: rewrites the log for it, without those of
   * `cool` that no write entered since `period` began.
   */
  async compact(epoch: number, period: number, cool: readonly number[]): Promise<void> {
    await this.#exclusive(async () => {
      for (const e of cool) {
        const h = this.#hot.get(e);
        if (h && h.active === 0 && h.period < period && !h.durable) this.#hot.delete(e);
      }
      const header = { extentSize: this.extentSize, size: this.size, epoch };
      const extents = this.hotExtents();
      let end: number;
      let fh: FileHandle;
      try {
        end = await writeActivityLog(this.path, header, extents);
        fh = await openForAppend(this.path);
      } catch (err) {
        // The file at the path may already be the new one, and the handle the replaced file's:
        // no later record could be trusted to land where recovery looks, so no writer goes on.
        this.#failed ??= toIoError(err, 'write', this.path);
        throw this.#failed;
      }
      await this.#fh.close().catch(() => {});
      this.#fh = fh;
      this.#end = end;
      this.#seq = 1;
      this.#epoch = epoch;
    });
  }

  /** Waits for the records in progress, then closes the file. The log is unusable afterwards. */
  async close(): Promise<void> {
    await this.#records.idle();
    await this.#exclusive(() => this.#fh.close());
  }

  #schedule(extent: number): Promise<void> {
    return this.#records.add(extent);
  }

  /**
   * Appends one record naming a batch of extents. An extent whose record is pending cannot go
   * cold (see {@link coolable}), so every extent of the batch is still hot, waiting on this one.
   */
  async #commitBatch(batch: number[]): Promise<void> {
    try {
      if (this.#failed) throw this.#failed;
      await this.#exclusive(() => this.#append(batch));
    } catch (err) {
      this.#failed ??= toIoError(err, 'write', this.path);
      throw this.#failed;
    }
    for (const e of batch) {
      const h = this.#hot.get(e);
      if (h) h.durable = undefined;
    }
  }

  async #append(extents: readonly number[]): Promise<void> {
    const record = encodeRecord(this.#seq, extents);
    await this.#fh.write(record, 0, record.length, this.#end);
    await this.#fh.datasync();
    this.#end += record.length;
    this.#seq++;
  }

  #exclusive(body: () => Promise<void>): Promise<void> {
    const run = this.#io.then(body);
    this.#io = run.catch(() => {});
    return run;
  }
}

async function openForAppend(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r+');
  } catch (err) {
    throw toIoError(err, 'open', path);
  }
}

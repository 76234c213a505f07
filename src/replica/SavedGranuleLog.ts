import { open, type FileHandle } from 'node:fs/promises';
import { ErrorCode, StateError, toIoError, type IoError } from '../errors.js';
import { encodeRecord, readActivityLog, writeActivityLog, type ActivityLogHeader } from '../state/ActivityLogFile.js';

/** What a saved-granule log is for: the replica disk's size, the buffer's granularity, and the checkpoint interval. */
export interface SavedGranuleLogHeader {
  /** Bytes per granule (the log's extent size). */
  readonly granularity: number;
  /** Size of the replica disk in bytes. */
  readonly size: number;
  /** The checkpoint interval the log belongs to (the file header's epoch). */
  readonly interval: number;
}

/**
 * How far the write path makes saves durable before the write over them may go:
 * - `power`: each batch's buffer data and its record are fdatasync'ed (they survive a power loss);
 * - `process`: they are only written (pwrite completed), so they survive a crash of the process
 *   (`kill -9`: the kernel keeps what it wrote) but not of the kernel or the power.
 */
export type ReplicaDurability = 'power' | 'process';

/** The durability modes, for option parsers. */
export const REPLICA_DURABILITIES: readonly ReplicaDurability[] = ['power', 'process'];

/** A log read back at start-up: the log, and every granule it names. */
export interface RecoveredGranuleLog {
  readonly log: SavedGranuleLog;
  /** Granules durably saved in the interval, sorted. */
  readonly granules: readonly number[];
  /** True when a last record had been cut short by a crash: its granules were never let through. */
  readonly tornTail: boolean;
}

/**
 * The durable record of which granules the checkpoint buffer holds, in the activity log's file
 * format (docs/activity-log.md: a header, a snapshot record, appended records, each appended
 * record written and fdatasync'ed before the next). The extent size is the buffer's granularity
 * and the epoch is the checkpoint interval.
 *
 * Not `ActivityLog` (src/state/ActivityLog.ts): that class can only start an empty log, so a restart would have to
 * empty the file and name the granules again, and a crash in between would forget granules whose
 * old contents are in the buffer. This one reopens a log as it is, and replaces it whole (atomic
 * rename) only to start a new interval.
 */
export class SavedGranuleLog {
  readonly path: string;
  readonly granularity: number;
  readonly size: number;
  #interval: number;
  #fh: FileHandle;
  #end: number;
  #seq: number;
  /** Serializes appends and resets: records must land one after another. */
  #io: Promise<void> = Promise.resolve();
  #failed: IoError | undefined;
  #records = 0;
  /** `power`: each append is fdatasync'ed; `process`: written only (see {@link ReplicaDurability}). */
  readonly durability: ReplicaDurability;

  private constructor(path: string, h: SavedGranuleLogHeader, fh: FileHandle, end: number, seq: number, durability: ReplicaDurability) {
    this.path = path;
    this.durability = durability;
    this.granularity = h.granularity;
    this.size = h.size;
    this.#interval = h.interval;
    this.#fh = fh;
    this.#end = end;
    this.#seq = seq;
  }

  /** Starts a new log at `path` (replacing any file there, atomically) naming no granule. */
  static async create(path: string, header: SavedGranuleLogHeader, durability: ReplicaDurability = 'power'): Promise<SavedGranuleLog> {
    const end = await writeActivityLog(path, fileHeader(header), []);
    return new SavedGranuleLog(path, header, await openForAppend(path), end, 1, durability);
  }

  /**
   * Reopens the log at `path` after a restart (or a crash). Its geometry must be `expected`'s
   * (`BM_ERR_LOG_GEOMETRY` otherwise); any damage is its own `BM_ERR_LOG_*` error. A torn last
   * record is dropped by rewriting the file with the granules it names, atomically, so the next
   * append lands where a reader looks for it.
   */
  static async open(path: string, expected: { granularity: number; size: number }, durability: ReplicaDurability = 'power'): Promise<RecoveredGranuleLog> {
    const contents = await readActivityLog(path);
    const { extentSize, size, epoch } = contents.header;
    if (extentSize !== expected.granularity || size !== expected.size) {
      throw new StateError(
        ErrorCode.LOG_GEOMETRY,
        `${path}: the saved-granule log is for ${size} bytes in granules of ${extentSize}; the replica disk has ${expected.size} bytes in granules of ${expected.granularity}`,
      );
    }
    const header = { granularity: extentSize, size, interval: epoch };
    let end = contents.end;
    let seq = contents.records;
    if (contents.tornTail) {
      end = await writeActivityLog(path, fileHeader(header), contents.extents);
      seq = 1;
    }
    const log = new SavedGranuleLog(path, header, await openForAppend(path), end, seq, durability);
    return { log, granules: contents.extents, tornTail: contents.tornTail };
  }

  /** The checkpoint interval the log belongs to. */
  get interval(): number {
    return this.#interval;
  }

  /** Records appended by this object (for tests and status: one per batch of saves). */
  get appendedRecords(): number {
    return this.#records;
  }

  /**
   * Appends one record naming `granules` and, in `power` mode, fdatasyncs it: once this
   * resolves, a restart finds them (in `process` mode: a restart on the same boot). After a
   * failed append no further one is made (a later record behind a torn one would read as damage,
   * not as a torn tail) until {@link reset} starts a new file.
   */
  append(granules: readonly number[]): Promise<void> {
    return this.#exclusive(async () => {
      if (this.#failed) throw this.#failed;
      const record = encodeRecord(this.#seq, granules);
      try {
        await this.#fh.write(record, 0, record.length, this.#end);
        if (this.durability === 'power') await this.#fh.datasync();
      } catch (err) {
        this.#failed = toIoError(err, 'write', this.path);
        throw this.#failed;
      }
      this.#end += record.length;
      this.#seq++;
      this.#records++;
    });
  }

  /**
   * Starts interval `interval` with no granule saved: the file is replaced whole (temporary file,
   * fsync, rename, directory fsync), so a crash leaves the old interval's log or the new one.
   */
  reset(interval: number): Promise<void> {
    return this.#exclusive(async () => {
      const header = { granularity: this.granularity, size: this.size, interval };
      let end: number;
      let fh: FileHandle;
      try {
        end = await writeActivityLog(this.path, fileHeader(header), []);
        fh = await openForAppend(this.path);
      } catch (err) {
        // The file at the path may be the old log or the new one: no append can be trusted now.
        this.#failed = toIoError(err, 'write', this.path);
        throw this.#failed;
      }
      await this.#fh.close().catch(() => {});
      this.#fh = fh;
      this.#end = end;
      this.#seq = 1;
      this.#interval = interval;
      this.#failed = undefined;
    });
  }

  /** Makes every record appended so far durable (fdatasync), whatever the mode. */
  sync(): Promise<void> {
    return this.#exclusive(async () => {
      try {
        await this.#fh.datasync();
      } catch (err) {
        throw toIoError(err, 'flush', this.path);
      }
    });
  }

  /** Waits for the append in progress, then closes the file. */
  close(): Promise<void> {
    return this.#exclusive(() => this.#fh.close());
  }

  #exclusive(body: () => Promise<void>): Promise<void> {
    const run = this.#io.then(body);
    this.#io = run.catch(() => {});
    return run;
  }
}

function fileHeader(h: SavedGranuleLogHeader): ActivityLogHeader {
  return { extentSize: h.granularity, size: h.size, epoch: h.interval };
}

async function openForAppend(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r+');
  } catch (err) {
    throw toIoError(err, 'open', path);
  }
}

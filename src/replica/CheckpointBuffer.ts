import { ErrorCode, InvalidArgumentError, StateError, toIoError, type IoError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { GroupCommit } from '../util/GroupCommit.js';
import { formatBytes } from '../util/size.js';
import { GranuleSet } from './GranuleSet.js';
import { SavedGranuleLog, type ReplicaDurability } from './SavedGranuleLog.js';

export { REPLICA_DURABILITIES, type ReplicaDurability } from './SavedGranuleLog.js';

/** Bytes per granule of the checkpoint buffer by default. */
export const DEFAULT_REPLICA_GRANULARITY = 64 << 10;
/** The smallest granularity: writes are usually 4 KiB aligned, so a smaller granule saves nothing. */
export const MIN_REPLICA_GRANULARITY = 4 << 10;
/** The largest granularity: every first write to a granule reads and writes this much more. */
export const MAX_REPLICA_GRANULARITY = 64 << 20;
/** Granules copied back at once by {@link CheckpointBuffer.restore}. */
const RESTORE_DEPTH = 8;

/** Checks a granularity: a power of two from 4 KiB to 64 MiB (`BM_ERR_INVALID_OPTION` otherwise). */
export function checkGranularity(granularity: number): number {
  if (
    !Number.isSafeInteger(granularity) ||
    granularity < MIN_REPLICA_GRANULARITY ||
    granularity > MAX_REPLICA_GRANULARITY ||
    (granularity & (granularity - 1)) !== 0
  ) {
    throw new InvalidArgumentError(
      ErrorCode.INVALID_OPTION,
      `granularity must be a power of two from ${formatBytes(MIN_REPLICA_GRANULARITY)} to ${formatBytes(MAX_REPLICA_GRANULARITY)}, not ${String(granularity)}`,
    );
  }
  return granularity;
}

/** Checks that the log can name every granule of a `size`-byte disk (granule numbers are 32-bit). */
function checkGranuleCount(size: number, granularity: number): void {
  if (Math.ceil(size / granularity) > 2 ** 32) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `granularity ${formatBytes(granularity)} makes more than 2^32 granules of a ${formatBytes(size)} disk: take a larger one`);
  }
}

/** The buffer's own file: a device that can also be resized (a {@link FileDevice} is one). */
export interface BufferFile extends BlockDevice {
  truncate(size: number): Promise<void>;
}

/** What a {@link CheckpointBuffer} works on. */
export interface CheckpointBufferOptions {
  /** The replica disk, writable. The buffer reads it before writes; `restore` writes it. */
  readonly disk: BlockDevice;
  /** The buffer file, writable; the buffer owns it from now on and closes it. Old contents live at their disk offsets. */
  readonly buffer: BufferFile;
  /** The saved-granule log's path. */
  readonly logPath: string;
  /** Bytes per granule (see {@link checkGranularity}). */
  readonly granularity: number;
  /**
   * What a save must survive before the write over it may go (default `power`): `power`
   * fdatasyncs the buffer file, then the record, per batch; `process` only writes them, in the
   * same order (see {@link ReplicaDurability}). Checkpoints and restores sync in either mode.
   */
  readonly durability?: ReplicaDurability;
}

/** What {@link CheckpointBuffer.restore} did. */
export interface RestoreResult {
  readonly granules: number;
  readonly bytes: number;
}

/** Runs `body`; if it fails, closes `file` (which the buffer would have owned) before rethrowing. */
async function closingOnFailure<T>(file: BlockDevice, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    await file.close().catch(() => {});
    throw err;
  }
}

/**
 * Copy-before-write for the secondary of a continuous replication (QEMU's hidden disk, in
 * spirit): before a write overwrites a granule of the disk for the first time in a checkpoint
 * interval, the granule's contents as of the last checkpoint are copied into a sparse buffer
 * file of the disk's size, at the same offset, and made durable, and the granule is durably
 * recorded as saved (a {@link SavedGranuleLog}) — only then may the write be issued. So after
 * any crash the buffer and the log can put the disk back exactly as it was at the checkpoint.
 *
 * - A granule is saved at most once per interval; a save in progress is shared by every write
 *   that needs it, so no write reads the disk after another has overwritten it.
 * - Saves that arrive while a commit is in progress share the next one: one fdatasync of the
 *   buffer file and one log record for all of them.
 * - With `durability: 'process'` a commit skips both fdatasyncs: the buffer data is written
 *   before the record is written before the write is let go, which a crash of the process
 *   (not of the machine) cannot undo.
 * - {@link checkpoint} starts a new empty interval, {@link restore} puts the saved contents back.
 *   Neither may run while writes over the disk are in flight (the caller holds them).
 */
export class CheckpointBuffer {
  readonly granularity: number;
  readonly size: number;
  readonly durability: ReplicaDurability;
  readonly #disk: BlockDevice;
  readonly #buffer: BufferFile;
  readonly #log: SavedGranuleLog;
  /** Granules whose old contents and record are durable. */
  readonly #saved: GranuleSet;
  /** Saves in progress: a write to the granule waits for this one instead of reading the disk itself. */
  readonly #saving = new Map<number, Promise<void>>();
  /** Granules written to the buffer file, waiting for the next commit. */
  /** Saved granules waiting for their record, one per batch of saves. */
  readonly #records = new GroupCommit<number>((batch) => this.#commitBatch(batch));
  #commits = 0;
  /** A commit failed: no new save until a new interval starts (the batch's fate on disk is unknown). */
  #failed: IoError | undefined;
  /** A log reset failed: which interval the file holds is unknown, so nothing may be trusted until a restart. */
  #broken: Error | undefined;

  private constructor(o: CheckpointBufferOptions, log: SavedGranuleLog, saved: Iterable<number>) {
    this.granularity = o.granularity;
    this.size = o.disk.size;
    this.durability = o.durability ?? 'power';
    this.#disk = o.disk;
    this.#buffer = o.buffer;
    this.#log = log;
    this.#saved = new GranuleSet(Math.ceil(o.disk.size / o.granularity), saved);
  }

  /** Starts interval `interval` with an empty buffer: a new log (replacing any) and an emptied buffer file. */
  static async create(o: CheckpointBufferOptions, interval: number): Promise<CheckpointBuffer> {
    return closingOnFailure(o.buffer, async () => {
      checkGranularity(o.granularity);
      checkGranuleCount(o.disk.size, o.granularity);
      const log = await SavedGranuleLog.create(o.logPath, { granularity: o.granularity, size: o.disk.size, interval }, o.durability);
      const buffer = new CheckpointBuffer(o, log, []);
      await buffer.#emptyBufferFile();
      return buffer;
    });
  }

  /**
   * Reopens the interval a previous run left (after a clean stop or a crash): the saved set is
   * exactly what the log durably names. A log that names granules with a buffer file shorter
   * than the disk is `BM_ERR_STATE_MISMATCH`.
   */
  static async recover(o: CheckpointBufferOptions): Promise<CheckpointBuffer> {
    return closingOnFailure(o.buffer, async () => {
      checkGranularity(o.granularity);
      const { log, granules } = await SavedGranuleLog.open(o.logPath, { granularity: o.granularity, size: o.disk.size }, o.durability);
      try {
        if (o.buffer.size < o.disk.size) {
          if (granules.length > 0) {
            throw new StateError(
              ErrorCode.STATE_MISMATCH,
              `${o.buffer.description}: the checkpoint buffer holds ${o.buffer.size} bytes, but its log names ${granules.length} saved granules of a ${o.disk.size}-byte disk`,
            );
          }
          // Cut short by a crash while it was being emptied, after the new interval began: nothing in it is used.
          await o.buffer.truncate(o.disk.size);
        }
      } catch (err) {
        await log.close().catch(() => {});
        throw err;
      }
      return new CheckpointBuffer(o, log, granules);
    });
  }

  /** The checkpoint interval the buffer holds the start of. */
  get interval(): number {
    return this.#log.interval;
  }

  /** Granules saved in this interval. */
  get savedGranules(): number {
    return this.#saved.size;
  }

  /** Bytes of old contents the buffer holds (the last granule may be short). */
  get bufferBytes(): number {
    const last = Math.ceil(this.size / this.granularity) - 1;
    let bytes = this.#saved.size * this.granularity;
    if (this.#saved.has(last)) bytes -= this.granularity - (this.size - last * this.granularity);
    return bytes;
  }

  /** Batches committed by this object: each one log record (and, in `power` mode, one fdatasync of the buffer file and one of the log). */
  get commits(): number {
    return this.#commits;
  }

  /** True when granule `g`'s old contents are durably saved in this interval. */
  isSaved(g: number): boolean {
    return this.#saved.has(g);
  }

  /** The saved granules, sorted. */
  saved(): number[] {
    return [...this.#saved.values()];
  }

  /**
   * A write (or zeroing, or discard) of `length` bytes at `offset` is about to be issued to the
   * disk: resolves once every granule it touches, whole or in part, has its contents as of the
   * checkpoint durably saved. Rejects (and the write must not be issued) if a save fails.
   */
  preserve(offset: number, length: number): Promise<void> {
    if (this.#broken) return Promise.reject(this.#broken);
    const end = Math.min(offset + length, this.size);
    if (length <= 0 || offset >= end) return Promise.resolve();
    const first = Math.floor(offset / this.granularity);
    const last = Math.floor((end - 1) / this.granularity);
    let waits: Promise<void>[] | undefined;
    for (let g = first; g <= last; g++) {
      if (this.#saved.has(g)) continue;
      let save = this.#saving.get(g);
      if (!save) {
        save = this.#save(g).finally(() => this.#saving.delete(g));
        this.#saving.set(g, save);
      }
      (waits ??= []).push(save);
    }
    if (!waits) return Promise.resolve();
    return waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined);
  }

  /**
   * Makes the disk as it is now the new consistent point: fdatasyncs the disk, runs `beforeCommit`
   * (the caller records the new checkpoint's name), then replaces the log with an empty one for
   * `interval` (the commit point: atomic), and empties the buffer file. A crash before the commit
   * leaves the old interval, whose restore still gives the old checkpoint; after it, the new one.
   */
  async checkpoint(interval: number, beforeCommit?: () => Promise<void>): Promise<void> {
    if (this.#broken) throw this.#broken;
    await this.#idle();
    await this.#disk.flush();
    await beforeCommit?.();
    await this.#startInterval(interval);
    await this.#emptyBufferFile();
  }

  /**
   * Puts the disk back as it was at the checkpoint: every saved granule copied back from the
   * buffer, the disk fdatasync'ed, `beforeDrop` run (the caller records that the restore is
   * done), then a new empty interval started (the disk is at the checkpoint now: restoring again
   * would change nothing). Interrupted by a crash, the buffer and log are as they were, and
   * running it again after the restart restores the same contents.
   */
  async restore(beforeDrop?: () => Promise<void>): Promise<RestoreResult> {
    if (this.#broken) throw this.#broken;
    await this.#idle();
    const granules = this.saved();
    const bytes = this.bufferBytes;
    let next = 0;
    const copier = async (): Promise<void> => {
      while (next < granules.length) {
        const g = granules[next++]!;
        const at = g * this.granularity;
        const data = Buffer.allocUnsafe(Math.min(this.granularity, this.size - at));
        await this.#buffer.read(data, at);
        await this.#disk.write(data, at);
      }
    };
    await Promise.all(Array.from({ length: Math.min(RESTORE_DEPTH, granules.length) }, copier));
    await this.#disk.flush();
    await beforeDrop?.();
    await this.#startInterval(this.#log.interval + 1);
    await this.#emptyBufferFile();
    return { granules: granules.length, bytes };
  }

  /**
   * Waits for the saves in progress, then fdatasyncs the buffer file and the log: whatever a
   * previous run wrote in `process` mode is durable from here on. A start runs it before its
   * state file may say the buffer is power-safe.
   */
  async sync(): Promise<void> {
    if (this.#broken) throw this.#broken;
    await this.#idle();
    try {
      await this.#buffer.flush();
    } catch (err) {
      throw toIoError(err, 'flush', this.#buffer.description);
    }
    await this.#log.sync();
  }

  /** Waits for the saves in progress, then closes the log and the buffer file (the disk is the caller's). */
  async close(): Promise<void> {
    await this.#idle();
    await Promise.all([this.#log.close(), this.#buffer.close()]);
  }

  async #save(g: number): Promise<void> {
    if (this.#failed) throw this.#failed;
    const at = g * this.granularity;
    const data = Buffer.allocUnsafe(Math.min(this.granularity, this.size - at));
    await this.#disk.read(data, at);
    await this.#buffer.write(data, at);
    await this.#commit(g);
  }

  /** Waits until granule `g`, already written to the buffer file, is durable with its record. */
  #commit(g: number): Promise<void> {
    return this.#records.add(g);
  }

  /**
   * One batch: the buffer's data first, then the record that names it. In `power` mode the
   * buffer file is fdatasync'ed before the record is written, and the record before the batch
   * is let go; in `process` mode neither is, and the order rests on each write having completed
   * (the buffer writes before {@link #commit} was called) before the next is issued.
   */
  async #commitBatch(batch: number[]): Promise<void> {
    try {
      if (this.#failed) throw this.#failed;
      if (this.durability === 'power') {
        try {
          await this.#buffer.flush();
        } catch (err) {
          throw toIoError(err, 'flush', this.#buffer.description);
        }
      }
      await this.#log.append(batch);
    } catch (err) {
      this.#failed ??= toIoError(err, 'write', this.#log.path);
      throw this.#failed;
    }
    for (const g of batch) this.#saved.add(g);
    this.#commits++;
  }

  /** The commit point of a new interval: the log replaced by an empty one, atomically. */
  async #startInterval(interval: number): Promise<void> {
    try {
      await this.#log.reset(interval);
    } catch (err) {
      this.#broken = new StateError(
        ErrorCode.STATE_CORRUPT,
        `the checkpoint buffer's log could not be replaced (${err instanceof Error ? err.message : String(err)}): restart the replica to read back which interval it holds`,
        'restart the replica: it reads the log and its state file back and carries on from what they say',
        { cause: err },
      );
      throw this.#broken;
    }
    this.#saved.clear();
    this.#failed = undefined;
  }

  /**
   * Frees the buffer file's blocks (truncate to 0, then back to the disk's size). Best effort:
   * once the log names no granule nothing in the file is ever read, and a save overwrites its
   * granule before naming it.
   */
  async #emptyBufferFile(): Promise<void> {
    try {
      await this.#buffer.truncate(0);
      await this.#buffer.truncate(this.size);
      await this.#buffer.flush();
    } catch {
      // See above: leftover contents are harmless.
    }
  }

  /** Resolves once no save is in progress (saves never wait on anything that waits on this). */
  async #idle(): Promise<void> {
    while (this.#saving.size > 0) await Promise.allSettled([...this.#saving.values()]);
  }
}

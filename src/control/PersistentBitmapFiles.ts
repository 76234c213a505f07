import { unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { loadBitmap, markInUse, saveBitmap } from '../bitmap/BitmapFile.js';
import { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { BlockmirrorError, IoError, StateError } from '../errors.js';
import { ActivityLog, DEFAULT_LOG_EXTENT_SIZE } from '../state/ActivityLog.js';
import { readActivityLog, type ActivityLogContents } from '../state/ActivityLogFile.js';
import { Checkpointer } from '../state/Checkpointer.js';
import { syncDirectory } from '../util/syncDirectory.js';

/** How a persistent bitmap's files are kept, and where their trouble is told. */
export interface BitmapFilesOptions {
  /** Names the bitmap in notices: `'NAME' of NODE`. */
  readonly describe: string;
  /** Milliseconds between checkpoints while the bitmap changes (default: the Checkpointer's). */
  readonly checkpointIntervalMs?: number;
  /** Something the daemon's operator should know: a bitmap recovered after a crash, or loaded all dirty, and why. */
  readonly notice: (message: string) => void;
}

/** A bitmap file opened by {@link PersistentBitmapFiles.open}. */
export interface OpenedBitmapFiles {
  readonly files: PersistentBitmapFiles;
  readonly bitmap: DirtyBitmap;
  /** False: the file was in use and its log missing, damaged or not its pair, so the bitmap is all dirty. */
  readonly consistent: boolean;
}

/** logged: writes enter the log; unlogging: the log is being dropped (writes wait); unlogged: a crash loads all dirty. */
type LogState = 'logged' | 'unlogging' | 'unlogged';

/**
 * The files of one persistent bitmap while the daemon has it open: its bitmap file, always
 * flagged in use; its activity log next to it (`NAME.alog` beside `NAME.bmp`); and the
 * {@link Checkpointer} that saves the one and compacts the other. At any crash, bitmap file ∪
 * log extents covers every mark a write has made or was about to make since the file was
 * created (a clear may come undone: more dirty, never less), which is what
 * {@link PersistentBitmapFiles.open} loads.
 *
 * When the log or a checkpoint fails, the log is dropped (deleted, durably, before any further
 * write is let through): the bitmap file stays in use without a log, which loads all dirty and
 * inconsistent after a crash, as files of older builds do. Writes go on; only if even that fails
 * do they fail, since letting one through unlogged could lose its mark.
 */
export class PersistentBitmapFiles {
  readonly bitmapPath: string;
  readonly logPath: string;
  readonly bitmap: DirtyBitmap;
  readonly #log: ActivityLog;
  readonly #checkpointer: Checkpointer;
  readonly #options: BitmapFilesOptions;
  #state: LogState = 'logged';
  #unlogging: Promise<void> | undefined;

  private constructor(bitmapPath: string, bitmap: DirtyBitmap, log: ActivityLog, generation: number, options: BitmapFilesOptions) {
    this.bitmapPath = bitmapPath;
    this.logPath = log.path;
    this.bitmap = bitmap;
    this.#log = log;
    this.#options = options;
    this.#checkpointer = new Checkpointer({
      bitmap,
      path: bitmapPath,
      generation,
      log,
      intervalMs: options.checkpointIntervalMs,
      onError: (err) => void this.#unlog(err).catch(() => undefined),
    });
  }

  /** The activity log that goes with a bitmap file: `X.bmp` → `X.alog`. */
  static logPathFor(bitmapPath: string): string {
    return `${bitmapPath.replace(/\.bmp$/, '')}.alog`;
  }

  /** Files for a new, empty bitmap: the log first, so the in-use file never exists without its pair. */
  static async create(bitmapPath: string, bitmap: DirtyBitmap, options: BitmapFilesOptions): Promise<PersistentBitmapFiles> {
    const generation = 1;
    const log = await ActivityLog.create(PersistentBitmapFiles.logPathFor(bitmapPath), { extentSize: DEFAULT_LOG_EXTENT_SIZE, size: bitmap.size, epoch: generation });
    try {
      await saveBitmap(bitmapPath, bitmap, { inUse: true, generation });
    } catch (err) {
      await log.close().catch(() => undefined);
      await unlink(log.path).catch(() => undefined);
      throw err;
    }
    return new PersistentBitmapFiles(bitmapPath, bitmap, log, generation, options);
  }

  /**
   * Opens a saved bitmap for an image of `size` bytes. A clean file loads as saved. A file in use
   * (its writer crashed) loads with its log's extents dirty when the log is whole and its pair
   * (same image size; the file's generation or the one before, as a checkpoint leaves them),
   * else all dirty and inconsistent: never smaller than what writes may have changed. Either
   * way the file is left in use with a fresh log paired to it, ready for writes.
   */
  static async open(bitmapPath: string, size: number, options: BitmapFilesOptions): Promise<OpenedBitmapFiles> {
    const logPath = PersistentBitmapFiles.logPathFor(bitmapPath);
    const loaded = await loadBitmap(bitmapPath, { size, trustInUse: true });
    const { generation, granularity } = loaded.header;
    if (!loaded.header.inUse) {
      // A leftover log next to a clean file says nothing: replace it, then flag the file.
      const log = await ActivityLog.create(logPath, { extentSize: DEFAULT_LOG_EXTENT_SIZE, size, epoch: generation });
      try {
        await markInUse(bitmapPath);
      } catch (err) {
        await log.close().catch(() => undefined);
        throw err;
      }
      return { files: new PersistentBitmapFiles(bitmapPath, loaded.bitmap, log, generation, options), bitmap: loaded.bitmap, consistent: true };
    }
    const recovered = await recoverFromLog(logPath, loaded.bitmap, generation);
    let bitmap: DirtyBitmap;
    if ('why' in recovered) {
      options.notice(`persistent bitmap ${options.describe} was in use when the daemon stopped and ${recovered.why}: it loads all dirty and inconsistent`);
      bitmap = DirtyBitmap.create(size, granularity);
      bitmap.markAll();
    } else {
      bitmap = recovered.bitmap;
      const torn = recovered.log.tornTail ? ' (its last record was cut short, before its write was let through)' : '';
      options.notice(`persistent bitmap ${options.describe} was in use when the daemon stopped: recovered from its activity log, ${recovered.log.extents.length} extent(s) marked dirty${torn}`);
    }
    // What was loaded is saved before the old log is replaced: the new log starts from it.
    await saveBitmap(bitmapPath, bitmap, { inUse: true, generation: generation + 1 });
    const log = await ActivityLog.create(logPath, { extentSize: DEFAULT_LOG_EXTENT_SIZE, size, epoch: generation + 1 });
    return { files: new PersistentBitmapFiles(bitmapPath, bitmap, log, generation + 1, options), bitmap, consistent: !('why' in recovered) };
  }

  /** Writes enter the log (false once it was dropped after a failure). */
  get logged(): boolean {
    return this.#state === 'logged';
  }

  /** Starts checkpointing. */
  start(): void {
    this.#checkpointer.start();
  }

  /**
   * A write that will mark the bitmap is about to be let through: a promise to wait for when its
   * log record is not durable yet, else undefined (a hot extent: no wait, no allocation).
   * Pair every call with {@link exit}.
   */
  enter(offset: number, length: number): Promise<void> | undefined {
    if (this.#state === 'unlogged') return undefined;
    if (this.#state === 'unlogging') return this.#unlogging;
    const durable = this.#log.enter(offset, length);
    return durable && durable.catch((err: unknown) => this.#unlog(err));
  }

  /** The write entered with the same range has completed and been marked. */
  exit(offset: number, length: number): void {
    // A write that entered before the log was dropped may exit after: the dropped log's counts no longer matter.
    if (this.#state === 'logged') this.#log.exit(offset, length);
  }

  /**
   * Saves the bitmap now (after a change that is not a write's mark, such as a merge into it, that
   * a crash must not lose). A failed save drops the log instead: a crash then loads all dirty.
   */
  async checkpoint(): Promise<void> {
    if (this.#state === 'logged') {
      try {
        await this.#checkpointer.checkpoint();
        return;
      } catch (err) {
        await this.#unlog(err);
        return;
      }
    }
    await this.#unlogging;
  }

  /** Nothing writes to the bitmap any more (daemon stop, node deleted): saves it clean and deletes the log. */
  async closeClean(): Promise<void> {
    await this.#unlogging?.catch(() => undefined);
    await this.#checkpointer.stop();
    await saveBitmap(this.bitmapPath, this.bitmap, { generation: this.#checkpointer.generation + 1 });
    this.#state = 'unlogged';
    await this.#log.close().catch(() => undefined);
    // A clean file ignores any log; deleting it keeps the directory tidy.
    await unlink(this.logPath).catch(() => undefined);
  }

  /** The bitmap is removed: stops everything and deletes both files (the bitmap file first: a log alone loads nothing). */
  async discard(): Promise<void> {
    await this.#unlogging?.catch(() => undefined);
    await this.#checkpointer.stop();
    this.#state = 'unlogged';
    await this.#log.close().catch(() => undefined);
    await unlink(this.bitmapPath).catch(() => undefined);
    await unlink(this.logPath).catch(() => undefined);
  }

  /** Drops the log after a failure, once; resolves when no log is left that could miss a write. */
  #unlog(err: unknown): Promise<void> {
    if (this.#unlogging) return this.#unlogging;
    this.#state = 'unlogging';
    this.#options.notice(
      `persistent bitmap ${this.#options.describe}: ${err instanceof Error ? err.message : String(err)}; its activity log is dropped, so after a crash it loads all dirty and inconsistent`,
    );
    this.#unlogging = (async () => {
      await this.#checkpointer.stop();
      await this.#log.close().catch(() => undefined);
      try {
        await unlink(this.logPath);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      await syncDirectory(dirname(this.logPath));
      this.#state = 'unlogged';
    })();
    this.#unlogging.catch(() => undefined); // reported to the writers that wait for it
    return this.#unlogging;
  }
}

/** The file's bits ∪ its log's extents, or why the log cannot vouch for the file. */
async function recoverFromLog(
  logPath: string,
  bits: DirtyBitmap,
  generation: number,
): Promise<{ bitmap: DirtyBitmap; log: ActivityLogContents } | { why: string }> {
  let log: ActivityLogContents;
  try {
    log = await readActivityLog(logPath);
  } catch (err) {
    if (err instanceof IoError && err.errno === 'ENOENT') {
      return { why: `has no activity log ${logPath} (a file from an older build, or the log was lost)` };
    }
    return { why: `its activity log cannot be used (${describeError(err)})` };
  }
  const { header } = log;
  if (header.size !== bits.size) return { why: `its activity log ${logPath} is for an image of ${header.size} bytes, not ${bits.size}` };
  // A checkpoint saves the bitmap, then rewrites the log: the log may be one generation behind, never ahead.
  if (header.epoch !== generation && header.epoch !== generation - 1) {
    return { why: `its activity log ${logPath} goes with bitmap generation ${header.epoch}, the file is generation ${generation}: they are from different moments` };
  }
  for (const e of log.extents) {
    const offset = e * header.extentSize;
    bits.mark(offset, Math.min(header.extentSize, bits.size - offset));
  }
  return { bitmap: bits, log };
}

function describeError(err: unknown): string {
  if (err instanceof StateError) return `${err.code}: ${err.message.replace(`; ${err.hint}`, '')}`;
  if (err instanceof BlockmirrorError) return `${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

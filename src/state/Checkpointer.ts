import { saveBitmap } from '../bitmap/BitmapFile.js';
import { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import type { ActivityLog } from './ActivityLog.js';
import type { UnflushedCopies } from './UnflushedCopies.js';

/** How often a tracked bitmap is saved while it changes, by default (ms). */
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 2000;

/** What a {@link Checkpointer} saves and with what. */
export interface CheckpointerParts {
  /** The live bitmap: writes mark it, a copier may clear it. */
  readonly bitmap: DirtyBitmap;
  /** Its bitmap file. */
  readonly path: string;
  /** The generation of the bitmap file as it is now (the log's epoch). */
  readonly generation: number;
  readonly log: ActivityLog;
  /** With a copier: what it cleared that may not be on the target durably yet, and the target's flush. */
  readonly copies?: { readonly unflushed: UnflushedCopies; readonly flushTarget: () => Promise<void> };
  /** Milliseconds between checkpoints while anything changes (default {@link DEFAULT_CHECKPOINT_INTERVAL_MS}). */
  readonly intervalMs?: number;
  /** A checkpoint failed: from now on the files may not cover every write. */
  readonly onError: (err: unknown) => void;
}

/**
 * Saves a tracked bitmap now and then, so that extents of the activity log can go cold and a
 * resume after a crash redoes little. One checkpoint:
 *
 * 1. a new log period begins (writes entered from here on keep their extents hot);
 * 2. the target is flushed, so copies finished before are durable (their ranges are dropped);
 * 3. in one tick: snapshot = bitmap ∪ copies not yet durable, and the extents that may cool;
 * 4. the snapshot is saved atomically, flagged in use, as the next generation;
 * 5. the log is rewritten for that generation, without the cooled extents.
 *
 * A crash between 4 and 5 leaves a log one generation behind the bitmap: still a superset, and
 * accepted as such on recovery.
 */
export class Checkpointer {
  readonly #p: CheckpointerParts;
  #generation: number;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #lastEnters = -1;
  #lastCount = -1;
  #stopped = false;

  constructor(parts: CheckpointerParts) {
    this.#p = parts;
    this.#generation = parts.generation;
  }

  /** The bitmap file's generation as last saved. */
  get generation(): number {
    return this.#generation;
  }

  /** Checkpoints every interval from now on, skipping intervals in which nothing changed. */
  start(): void {
    const interval = this.#p.intervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS;
    this.#timer = setInterval(() => {
      if (this.#running || !this.#changed()) return;
      this.checkpoint().catch((err: unknown) => {
        if (!this.#stopped) this.#p.onError(err);
      });
    }, interval);
    this.#timer.unref();
  }

  /** Runs a checkpoint now (after the one in progress). `clean`: the bitmap no longer changes; save it without the in-use flag. */
  async checkpoint(options: { clean?: boolean } = {}): Promise<void> {
    while (this.#running) await this.#running.catch(() => {});
    this.#running = this.#run(options.clean === true);
    try {
      await this.#running;
    } finally {
      this.#running = undefined;
    }
  }

  /** Stops the timer; waits for a checkpoint in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running?.catch(() => {});
  }

  /** Something to save: new writes, bits copied, copies not yet counted durable, or hot extents that an idle spell lets cool. */
  #changed(): boolean {
    const { log, bitmap, copies } = this.#p;
    return log.enters !== this.#lastEnters || bitmap.count() !== this.#lastCount || (copies?.unflushed.rangeCount ?? 0) > 0 || log.hotCount > 0;
  }

  async #run(clean: boolean): Promise<void> {
    const { bitmap, log, copies, path } = this.#p;
    const enters = log.enters;
    const period = log.beginPeriod();
    // A target that cannot be flushed (gone, for a while) keeps every copy counted dirty: the
    // save below is then only more conservative, and still lets the log's extents cool.
    if (copies) await copies.unflushed.flushed(copies.flushTarget).catch(() => undefined);
    const snapshot = DirtyBitmap.create(bitmap.size, bitmap.granularity);
    snapshot.merge(bitmap);
    copies?.unflushed.addTo(snapshot);
    const cool = log.coolable(period, clean);
    const count = bitmap.count();
    const generation = this.#generation + 1;
    await saveBitmap(path, snapshot, { inUse: !clean, generation });
    this.#generation = generation;
    await log.compact(generation, period, cool);
    this.#lastEnters = enters;
    this.#lastCount = count;
  }
}

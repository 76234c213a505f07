import { performance } from 'node:perf_hooks';
import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { IoError, toIoError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import type { RangeLocks } from './RangeLocks.js';
import type { WriterGate } from './WriterGate.js';
import { preemption } from '../util/preemption.js';
import type { ActivityLog } from '../state/ActivityLog.js';
import type { UnflushedCopies } from '../state/UnflushedCopies.js';

/** A job with state on disk: writes are logged before they are let through, copies kept until flushed. */
export interface WriteJournal {
  readonly log: ActivityLog;
  readonly unflushed: UnflushedCopies;
}

/** How intercepted writes reach the target. */
export type CopyMode = 'background' | 'write-blocking';

/** What the job learns from the interceptor. */
export interface TrackedDeviceListener {
  /** Bits were marked: the copier has work. */
  onDirtied(): void;
  /** A write-blocking write reached the source but not the target (its range is marked dirty). */
  onTargetWriteError(err: IoError): void;
  /** An application write finished, taking `micros` (for latency histograms). */
  onWriteLatency?(micros: number): void;
}

/**
 * Deliberately broken orders, for tests that prove the stress test catches a broken invariant.
 * Never set outside tests.
 * @internal
 */
export interface UnsafeTestHooks {
  /** Invariant 1 reversed: mark the bitmap before the source write. */
  readonly markBeforeWrite?: boolean;
  /** Invariant 2 reversed: clear an extent's bits after its copy instead of before. */
  readonly clearAfterRead?: boolean;
  /** Invariant 3 dropped: write-blocking writes and copies do not wait for each other (and every such write goes to both sides). */
  readonly skipWriteBlockingWait?: boolean;
}

/** The parts a TrackedDevice works with; the job owns them. */
export interface TrackedDeviceParts {
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  readonly bitmap: DirtyBitmap;
  readonly gate: WriterGate;
  readonly locks: RangeLocks;
  readonly listener: TrackedDeviceListener;
  readonly copyMode: CopyMode;
  /** With a state directory: the activity log every tracked write enters first. */
  readonly journal?: WriteJournal;
  readonly testHooks?: UnsafeTestHooks;
}

/**
 * The write interceptor: the application does its I/O through this device while the job runs.
 * Reads come from the source (from the target after a pivot). In background mode a write goes to
 * the source and then marks its range dirty (invariant 1: mark after write). In write-blocking
 * mode it waits for overlapping copies and writes (invariant 3), goes to source and target
 * together, and is acknowledged only when both have it; a write whose granules are all still
 * dirty goes to the source alone, as in background mode, since the copier has yet to copy them
 * anyway. Once the job has ended, writes pass straight through (a job with a state directory
 * keeps marking its bitmap until closed, unless it pivoted).
 *
 * With a state directory every tracked write first enters the activity log, and is let through
 * only once its extent is durably logged (at once when it is hot).
 */
export class TrackedDevice {
  readonly size: number;
  readonly #p: TrackedDeviceParts;
  #mode: CopyMode;
  /** Whether a write-blocking write may clear the bits of granules it fully covered. */
  #clearCovered = true;

  constructor(parts: TrackedDeviceParts) {
    this.#p = parts;
    this.size = parts.source.size;
    this.#mode = parts.copyMode;
  }

  get copyMode(): CopyMode {
    return this.#mode;
  }

  /**
   * True once writes go to the target (the job pivoted). A write that started before the pivot and
   * ended after it may have gone to either side; the pivot itself waits for writes in flight.
   */
  get pivoted(): boolean {
    return this.#p.gate.pivoted;
  }

  /** @internal The job switches modes once no write is in flight. */
  setCopyMode(mode: CopyMode): void {
    this.#mode = mode;
  }

  /**
   * @internal Called once another thread may mark the bitmap: a write-blocking write then must
   * not clear bits, since a foreign write it raced with may have set them after the source write.
   */
  disallowClearingCovered(): void {
    this.#clearCovered = false;
  }

  /** Where reads and untracked writes go: the source, or the target once pivoted. */
  get #current(): BlockDevice {
    return this.#p.gate.pivoted ? this.#p.target : this.#p.source;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(buf, offset);
    return buf;
  }

  /** Reads into `buf` (as BlockDevice.read does). */
  async readInto(buf: Uint8Array, offset: number): Promise<void> {
    this.#checkRange('read', offset, buf.length);
    await this.#current.read(buf, offset);
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.#checkRange('write', offset, data.length);
    if (data.length === 0) return;
    await this.#intercept(offset, data.length, (dev) => dev.write(data, offset));
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkRange('write', offset, length);
    if (length === 0) return;
    await this.#intercept(offset, length, (dev) => dev.writeZeroes(offset, length));
  }

  /** Discards on the source; the range is marked so the target follows what the source reads back. */
  async discard(offset: number, length: number): Promise<void> {
    this.#checkRange('discard', offset, length);
    if (length === 0) return;
    await this.#intercept(offset, length, (dev) => dev.discard(offset, length), { background: true });
  }

  /** Flushes the device writes go to (the source, or the target once pivoted). */
  async flush(): Promise<void> {
    await this.#current.flush();
  }

  /**
   * This device seen as a {@link BlockDevice}, to serve it (an NBD export of a mirrored source:
   * every client write goes through the interceptor). Closing the view does not close the job's
   * devices.
   */
  asBlockDevice(): BlockDevice {
    const tracked = this;
    const { source, target } = this.#p;
    return {
      description: `${source.description} (mirrored to ${target.description})`,
      size: this.size,
      readOnly: false,
      blockSize: Math.max(source.blockSize, target.blockSize),
      maxRequest: Math.min(source.maxRequest, target.maxRequest),
      efficientZeroes: source.efficientZeroes && target.efficientZeroes,
      read: (buf, offset) => tracked.readInto(buf, offset),
      write: (data, offset) => tracked.write(data, offset),
      writeZeroes: (offset, length) => tracked.writeZeroes(offset, length),
      discard: (offset, length) => tracked.discard(offset, length),
      flush: () => tracked.flush(),
      allocBuffer: (size) => tracked.#current.allocBuffer(size),
      close: async () => {},
    };
  }

  async #intercept(
    offset: number,
    length: number,
    op: (dev: BlockDevice) => Promise<void>,
    options: { background?: boolean } = {},
  ): Promise<void> {
    const { gate, journal } = this.#p;
    const started = performance.now();
    await gate.enter();
    try {
      if (!gate.tracking && !(journal && !gate.pivoted)) await op(this.#current);
      else {
        const entered = journal?.log.enter(offset, length);
        try {
          if (entered) await entered;
          if (gate.tracking && this.#mode === 'write-blocking' && !options.background) await this.#writeBlocking(offset, length, op);
          else await this.#writeBackground(offset, length, op);
        } finally {
          journal?.log.exit(offset, length);
        }
      }
    } finally {
      gate.exit();
    }
    const elapsed = performance.now() - started;
    this.#p.listener.onWriteLatency?.(elapsed * 1000);
    await gate.throttleWrite();
  }

  async #writeBackground(offset: number, length: number, op: (dev: BlockDevice) => Promise<void>): Promise<void> {
    const { bitmap, listener, testHooks } = this.#p;
    if (testHooks?.markBeforeWrite) {
      bitmap.mark(offset, length);
      listener.onDirtied();
      await preemption();
      await op(this.#p.source);
      return;
    }
    try {
      await op(this.#p.source);
    } finally {
      // After the write has completed (invariant 1); also after a failed one, which may have
      // changed part of the range.
      bitmap.mark(offset, length);
      listener.onDirtied();
    }
  }

  async #writeBlocking(offset: number, length: number, op: (dev: BlockDevice) => Promise<void>): Promise<void> {
    const { source, target, bitmap, locks, listener, testHooks } = this.#p;
    const unsafe = testHooks?.skipWriteBlockingWait === true;
    const release = unsafe ? () => {} : await locks.acquireWrite(offset, offset + length);
    try {
      // Every granule it touches is still to be copied, and none is being copied (the lock): the
      // copier will carry this write to the target, so it is a background write, marked after
      // (invariant 1). The backlog does not grow, and the write costs one I/O instead of two.
      // (The broken order always writes both sides: a source-only write would be safe without the
      // wait, and hide the race the stress test must catch.)
      if (!unsafe && bitmap.allDirty(offset, length)) return await this.#writeBackground(offset, length, op);
      const [src, dst] = await Promise.allSettled([op(source), op(target)]);
      if (src.status === 'rejected' || dst.status === 'rejected') {
        // Either side may now differ from the other over this range: let the copier redo it.
        bitmap.mark(offset, length);
        listener.onDirtied();
        if (src.status === 'rejected') throw src.reason;
        listener.onTargetWriteError(toIoError((dst as PromiseRejectedResult).reason, 'write', target.description, offset, length));
        return;
      }
      // The target has it, not necessarily durably: a checkpoint still counts it dirty until flushed.
      this.#p.journal?.unflushed.written(offset, length);
      if (this.#clearCovered) this.#clearCoveredGranules(offset, length);
    } finally {
      release();
    }
  }

  /** Granules this write covered whole are now equal on both sides: the backlog shrinks. */
  #clearCoveredGranules(offset: number, length: number): void {
    const { bitmap } = this.#p;
    const g = bitmap.granularity;
    const first = Math.ceil(offset / g);
    const end = offset + length === this.size ? bitmap.bitCount : Math.floor((offset + length) / g);
    if (end > first) bitmap.testAndClear(first, end - first);
  }

  #checkRange(operation: 'read' | 'write' | 'discard', offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new IoError('EINVAL', operation === 'discard' ? 'discard' : operation, `${operation} of ${length} bytes at ${offset} is outside the device (size ${this.size})`, {
        offset,
        length,
      });
    }
  }
}

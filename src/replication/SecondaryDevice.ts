import { IoError, toIoError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { DeviceWrapper } from '../io/DeviceWrapper.js';

/** Offset, length pairs. */
type Ranges = number[];

/**
 * The primary's view of a secondary's disk (an NBD export, usually): a {@link BlockDevice} that
 * knows when the link is down and what the secondary may have lost.
 *
 * - A failed request marks the link down and calls `onDown` once; while down, every request fails
 *   at once with ENOTCONN, without touching the network, so that writers on the primary (which
 *   keep going, their ranges marked dirty by the job) never wait for a dead peer.
 * - Ranges written since the last flush that succeeded are kept: a secondary that went away may
 *   have lost them (written, acknowledged, not yet on its disk). When a flush fails they are
 *   handed to `onLost`, for the job to copy again once the link is back.
 */
export class SecondaryDevice extends DeviceWrapper {
  readonly #onDown: (err: IoError) => void;
  readonly #onLost: (ranges: readonly number[]) => void;
  #up = true;
  /** Written since the last flush began... */
  #written: Ranges = [];
  /** ...and written before it, while it runs. */
  #flushing: Ranges[] = [];

  constructor(inner: BlockDevice, hooks: { onDown: (err: IoError) => void; onLost: (ranges: readonly number[]) => void }) {
    super(inner);
    this.#onDown = hooks.onDown;
    this.#onLost = hooks.onLost;
  }

  /** False from the first failure until {@link up} says the link works again. */
  get isUp(): boolean {
    return this.#up;
  }

  /**
   * Brings the link back: `reconnect` opens a new connection, then a flush proves the secondary
   * answers. What was written since the last flush that succeeded is handed to `onLost` first:
   * a secondary that went away may not have it (an NBD client says so by failing the first flush
   * after such a loss; a restarted secondary may also simply not have it).
   */
  async restore(reconnect: () => Promise<void>): Promise<void> {
    await reconnect();
    const unflushed = [...this.#flushing.flat(), ...this.#written];
    this.#flushing = [];
    this.#written = [];
    if (unflushed.length) this.#onLost(unflushed);
    // The first flush after losing acknowledged writes fails once, by design: the second says whether the link works.
    await this.inner.flush().catch(() => this.inner.flush());
    this.#up = true;
  }

  override read(buf: Uint8Array, offset: number): Promise<void> {
    return this.#run('read', offset, buf.length, () => this.inner.read(buf, offset));
  }

  override write(data: Uint8Array, offset: number): Promise<void> {
    return this.#run('write', offset, data.length, () => this.inner.write(data, offset), true);
  }

  override writeZeroes(offset: number, length: number): Promise<void> {
    return this.#run('write', offset, length, () => this.inner.writeZeroes(offset, length), true);
  }

  override discard(offset: number, length: number): Promise<void> {
    return this.#run('discard', offset, length, () => this.inner.discard(offset, length), true);
  }

  override async flush(): Promise<void> {
    const covered = this.#written;
    this.#written = [];
    this.#flushing.push(covered);
    try {
      await this.#run('flush', undefined, undefined, () => this.inner.flush());
      this.#flushing = this.#flushing.filter((r) => r !== covered);
    } catch (err) {
      // What this flush was to make durable may be gone with the secondary: copy it again.
      this.#flushing = this.#flushing.filter((r) => r !== covered);
      if (covered.length) this.#onLost(covered);
      throw err;
    }
  }

  /**
   * Everything written so far is durable on the secondary (its checkpoint fdatasync'ed the disk,
   * with no write in flight): nothing of it needs sending again after an outage.
   */
  durable(): void {
    this.#written = [];
    for (const r of this.#flushing) r.length = 0;
  }

  /** The link's device itself is the caller's to close. */
  override async close(): Promise<void> {}

  async #run(operation: 'read' | 'write' | 'discard' | 'flush', offset: number | undefined, length: number | undefined, op: () => Promise<void>, writes = false): Promise<void> {
    if (!this.#up) throw new IoError('ENOTCONN', operation === 'discard' ? 'discard' : operation, `${this.description}: the secondary is not connected`, { offset, length });
    try {
      await op();
      if (writes) this.#written.push(offset!, length!);
    } catch (err) {
      const io = toIoError(err, operation === 'discard' ? 'discard' : operation, this.description, offset, length);
      if (this.#up) {
        this.#up = false;
        this.#onDown(io);
      }
      throw io;
    }
  }
}

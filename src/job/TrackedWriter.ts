import { DirtyBitmap, type SharedBitmap } from '../bitmap/DirtyBitmap.js';
import { IoError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { openDevice } from '../io/openDevice.js';
import { preemption } from '../util/preemption.js';
import type { UnsafeTestHooks } from './TrackedDevice.js';
import { WriterGate, type SharedGate } from './WriterGate.js';

/** What another thread needs to write through a mirror job: plain data, for postMessage. */
export interface SharedTracker {
  readonly size: number;
  readonly source: DeviceSpec;
  readonly target: DeviceSpec;
  readonly bitmap: SharedBitmap;
  readonly gate: SharedGate;
  /** @internal Broken orders, for tests only. */
  readonly testHooks?: Pick<UnsafeTestHooks, 'markBeforeWrite'>;
}

/**
 * A mirror job's writer on another thread (from `job.tracker()`): it writes to the source with
 * its own handle and then marks the shared dirty bitmap (invariant 1, background mode). The job
 * can quiesce it through the shared gate; after a pivot its writes go to the target.
 */
export class TrackedWriter {
  readonly size: number;
  readonly #shared: SharedTracker;
  readonly #bitmap: DirtyBitmap;
  readonly #gate: WriterGate;
  #source: Promise<BlockDevice> | undefined;
  #target: Promise<BlockDevice> | undefined;

  private constructor(shared: SharedTracker) {
    this.#shared = shared;
    this.size = shared.size;
    this.#bitmap = DirtyBitmap.fromShared(shared.bitmap);
    this.#gate = WriterGate.fromShared(shared.gate);
  }

  /** Reopens a tracker handle on this thread. */
  static open(shared: SharedTracker): TrackedWriter {
    return new TrackedWriter(shared);
  }

  #device(): Promise<BlockDevice> {
    if (this.#gate.pivoted) return (this.#target ??= openDevice(this.#shared.target));
    return (this.#source ??= openDevice(this.#shared.source));
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    if (offset < 0 || offset + data.length > this.size) {
      throw new IoError('EINVAL', 'write', `write of ${data.length} bytes at ${offset} is outside the device (size ${this.size})`);
    }
    await this.#gate.enter();
    try {
      const tracking = this.#gate.tracking && !this.#gate.pivoted;
      if (tracking && this.#shared.testHooks?.markBeforeWrite) {
        this.#bitmap.mark(offset, data.length);
        await preemption();
        await (await this.#device()).write(data, offset);
        return;
      }
      try {
        await (await this.#device()).write(data, offset);
      } finally {
        if (tracking) this.#bitmap.mark(offset, data.length);
      }
    } finally {
      this.#gate.exit();
    }
    await this.#gate.throttleWrite();
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await (await this.#device()).read(buf, offset);
    return buf;
  }

  async flush(): Promise<void> {
    await (await this.#device()).flush();
  }

  async close(): Promise<void> {
    const devices = await Promise.all([this.#source, this.#target]);
    await Promise.all(devices.map((d) => d?.close()));
  }
}

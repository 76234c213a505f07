import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { openDevice } from '../io/openDevice.js';

/** Open devices by spec, each opened on first use (handles cannot cross threads, so each thread has its own). */
export class DeviceSet {
  readonly #devices = new Map<string, Promise<BlockDevice>>();

  /** The open device for `spec`. */
  get(spec: DeviceSpec): Promise<BlockDevice> {
    const key = JSON.stringify(spec);
    let dev = this.#devices.get(key);
    if (!dev) {
      dev = openDevice(spec);
      dev.catch(() => this.#devices.delete(key)); // let a later task try again
      this.#devices.set(key, dev);
    }
    return dev;
  }

  /** Closes every device opened. */
  async close(): Promise<void> {
    const devices = [...this.#devices.values()];
    this.#devices.clear();
    await Promise.all(devices.map(async (dev) => (await dev.catch(() => undefined))?.close()));
  }
}

import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { openDevice } from '../io/openDevice.js';

/** Devices this worker thread has open, by spec. Opened once, kept for the life of the worker. */
const devices = new Map<string, Promise<BlockDevice>>();

/** This thread's open device for `spec`, opened on first use (handles cannot cross threads). */
export function deviceFor(spec: DeviceSpec): Promise<BlockDevice> {
  const key = JSON.stringify(spec);
  let dev = devices.get(key);
  if (!dev) {
    dev = openDevice(spec);
    dev.catch(() => devices.delete(key)); // let a later task try again
    devices.set(key, dev);
  }
  return dev;
}

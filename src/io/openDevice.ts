import type { BlockDevice, DeviceSpec } from './BlockDevice.js';
import { FaultPlan, FaultyDevice } from './FaultyDevice.js';
import { FileDevice } from './FileDevice.js';
import { NbdDevice } from './nbd/NbdDevice.js';

/** Opens the device a spec describes. Every thread that does I/O opens its own. */
export async function openDevice(spec: DeviceSpec): Promise<BlockDevice> {
  switch (spec.kind) {
    case 'file':
      return FileDevice.open(spec);
    case 'nbd':
      return NbdDevice.open(spec);
    case 'faulty':
      return new FaultyDevice(await openDevice(spec.inner), new FaultPlan(spec.plan));
  }
}

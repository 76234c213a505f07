import type { DeviceRole, DeviceSpec } from './BlockDevice.js';

/** How to open what a location names. */
export interface LocationOptions {
  readonly role: DeviceRole;
  readonly writable: boolean;
  readonly direct?: boolean;
}

/** Turns a path given by a user into a device spec. */
export function deviceSpecFor(location: string, options: LocationOptions): DeviceSpec {
  return { kind: 'file', path: location, role: options.role, writable: options.writable, direct: options.direct ?? false };
}

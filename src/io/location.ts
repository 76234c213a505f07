import type { DeviceRole, DeviceSpec } from './BlockDevice.js';
import { isNbdUri, parseNbdUri } from './nbd/NbdUri.js';

/** How to open what a location names. */
export interface LocationOptions {
  readonly role: DeviceRole;
  readonly writable: boolean;
  /** O_DIRECT for files; an NBD export has no page cache of ours to bypass. */
  readonly direct?: boolean;
}

/**
 * Turns a location given by a user into a device spec: an NBD URI (`nbd://...`,
 * `nbd+unix://...`, checked here so a bad one fails before anything is opened) or a path.
 */
export function deviceSpecFor(location: string, options: LocationOptions): DeviceSpec {
  if (isNbdUri(location)) {
    parseNbdUri(location);
    return { kind: 'nbd', uri: location, role: options.role, writable: options.writable };
  }
  return { kind: 'file', path: location, role: options.role, writable: options.writable, direct: options.direct ?? false };
}

import { ErrorCode, InvalidArgumentError } from '../errors.js';
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

/** A value as an error message names it: its type, and its text when short. */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') return value === '' ? 'an empty string' : `'${value.slice(0, 60)}'`;
  return `${typeof value} ${String(value)}`;
}

/**
 * Checks that a source or target argument is a location (a non-empty path or NBD URI), so a
 * wrong argument fails naming itself rather than as an I/O error on "[object Object]".
 */
export function checkLocation(value: unknown, name: 'source' | 'target'): string {
  if (typeof value === 'string' && value !== '') return value;
  throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${name} must be a path or an NBD URI (a non-empty string), not ${describeValue(value)}`);
}

/** Checks a source or target that may also be a device spec (`{ kind: 'file' | 'nbd', ... }`). */
export function checkLocationOrSpec(value: unknown, name: 'source' | 'target'): string | DeviceSpec {
  const kind = typeof value === 'object' && value !== null ? (value as DeviceSpec).kind : undefined;
  if (kind === 'file' || kind === 'nbd' || kind === 'faulty') return value as DeviceSpec;
  if (typeof value === 'object' && value !== null) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${name} must be a path, an NBD URI or a device spec with kind 'file' or 'nbd', not ${describeValue(value)}`);
  }
  return checkLocation(value, name);
}

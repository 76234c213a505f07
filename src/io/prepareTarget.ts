import { open, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { DeviceError, ErrorCode, errnoOf, toIoError } from '../errors.js';
import { formatBytes } from '../util/size.js';
import type { DeviceSpec } from './BlockDevice.js';
import { formatNbdUri, parseNbdUri } from './nbd/NbdUri.js';

/** What preparing a file target found or did. */
export interface PreparedTarget {
  /** True when the target did not exist and was created, sized to the source: it reads as zeros. */
  readonly created: boolean;
}

async function statOrMissing(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return undefined;
    throw toIoError(err, 'open', path);
  }
}

/**
 * Checks a target against its source before anything is written. A file target is created if
 * missing (see {@link prepareFileTarget}); an NBD export is never created (its size is checked
 * once it is open) and must not be the source's own URI.
 */
export async function prepareTarget(target: DeviceSpec, source: DeviceSpec, sourceSize: number): Promise<PreparedTarget> {
  // A fault-injecting wrapper (tests) is prepared as the device it wraps.
  if (target.kind === 'faulty') return prepareTarget(target.inner, source, sourceSize);
  if (source.kind === 'faulty') return prepareTarget(target, source.inner, sourceSize);
  if (target.kind === 'file') return prepareFileTarget(target.path, source.kind === 'file' ? source.path : undefined, sourceSize);
  if (source.kind === 'nbd' && formatNbdUri(parseNbdUri(source.uri)) === formatNbdUri(parseNbdUri(target.uri))) {
    throw new DeviceError(ErrorCode.SAME_FILE, target.uri, `target ${target.uri} is the source itself`);
  }
  return { created: false };
}

/**
 * Checks a file target against its source before anything is written, and creates it (sparse,
 * sized to the source) if it is missing. An existing target is refused, untouched, when it is a
 * directory, the source itself (when the source is a file: `sourcePath`), or smaller than the source.
 */
export async function prepareFileTarget(targetPath: string, sourcePath: string | undefined, sourceSize: number): Promise<PreparedTarget> {
  const [target, source] = await Promise.all([statOrMissing(targetPath), sourcePath === undefined ? undefined : stat(sourcePath)]);
  if (target === undefined) {
    await createSparse(targetPath, sourceSize);
    return { created: true };
  }
  if (target.isDirectory()) {
    throw new DeviceError(ErrorCode.TARGET_IS_DIRECTORY, targetPath, `target ${targetPath} is a directory; name a file inside it`);
  }
  const same =
    source !== undefined && (target.isBlockDevice() ? target.rdev === source.rdev : target.dev === source.dev && target.ino === source.ino);
  if (same) {
    throw new DeviceError(ErrorCode.SAME_FILE, targetPath, `target ${targetPath} is the source itself (${sourcePath})`);
  }
  if (!target.isFile() && !target.isBlockDevice()) {
    throw new DeviceError(ErrorCode.TARGET_UNWRITABLE, targetPath, `target ${targetPath} is not a regular file or block device`);
  }
  // A block device's size is checked when it is opened (stat reports 0 for it).
  if (target.isFile() && target.size < sourceSize) {
    throw new DeviceError(
      ErrorCode.SIZE_MISMATCH,
      targetPath,
      `target ${targetPath} (${formatBytes(target.size)}) is smaller than the source (${formatBytes(sourceSize)}); ` +
        `grow it, or remove it to have it created`,
    );
  }
  return { created: false };
}

async function createSparse(path: string, size: number): Promise<void> {
  let handle;
  try {
    handle = await open(path, 'wx', 0o644);
  } catch (err) {
    const errno = errnoOf(err);
    throw new DeviceError(ErrorCode.TARGET_UNWRITABLE, path, `target ${path} cannot be created (${errno})`, { cause: err });
  }
  try {
    await handle.truncate(size);
  } catch (err) {
    throw toIoError(err, 'truncate', path);
  } finally {
    await handle.close();
  }
}

/** Refuses a target device (a block device, an NBD export) smaller than the source. */
export function checkTargetSize(targetPath: string, targetSize: number, sourceSize: number): void {
  if (targetSize < sourceSize) {
    throw new DeviceError(
      ErrorCode.SIZE_MISMATCH,
      targetPath,
      `target ${targetPath} (${formatBytes(targetSize)}) is smaller than the source (${formatBytes(sourceSize)})`,
    );
  }
}

import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { toIoError } from '../errors.js';
import { syncDirectory } from './syncDirectory.js';

/**
 * Replaces `path` with `parts` atomically and durably: a temporary file in the same directory,
 * written and fsynced, renamed over `path`, then the directory fsynced. After a crash there is
 * the old file or the new one, never a mix. Failures are `IoError`s naming `path`.
 */
export async function writeFileAtomic(path: string, parts: readonly Uint8Array[]): Promise<void> {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  try {
    const fh = await open(temp, 'wx');
    try {
      await fh.writev(parts as Uint8Array[], 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(temp, path);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw toIoError(err, 'write', path);
  }
  await syncDirectory(dirname(path));
}

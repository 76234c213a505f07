import { open, type FileHandle } from 'node:fs/promises';
import { toIoError } from '../errors.js';

/** Makes a rename durable. Some filesystems cannot fsync a directory; they say so with EINVAL. */
export async function syncDirectory(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw toIoError(err, 'flush', dir);
  } finally {
    await fh?.close();
  }
}

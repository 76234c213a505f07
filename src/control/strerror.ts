import { errnoOf } from '../errors.js';

/** glibc's strerror texts for the errnos block I/O meets: QEMU puts these in its messages. */
const TEXTS: Readonly<Record<string, string>> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EISDIR: 'Is a directory',
  ENOTDIR: 'Not a directory',
  EINVAL: 'Invalid argument',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  EROFS: 'Read-only file system',
  ENAMETOOLONG: 'File name too long',
  ECONNRESET: 'Connection reset by peer',
  ECONNREFUSED: 'Connection refused',
  ETIMEDOUT: 'Connection timed out',
  ECANCELED: 'Operation canceled',
  ENOTSUP: 'Operation not supported',
};

/** The strerror text of an error's errno, or its own message when it has none. */
export function strerror(err: unknown): string {
  let e: unknown = err;
  for (let depth = 0; e && depth < 4; depth++, e = (e as { cause?: unknown }).cause) {
    const text = TEXTS[errnoOf(e)];
    if (text) return text;
  }
  return err instanceof Error ? err.message : String(err);
}

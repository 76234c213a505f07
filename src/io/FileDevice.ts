import { randomBytes } from 'node:crypto';
import { constants, open, readFile, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Stats } from 'node:fs';
import { ErrorCode, DeviceError, IoError, toIoError, errnoOf } from '../errors.js';
import type { BlockDevice, DeviceRole, FileDeviceSpec } from './BlockDevice.js';
import { allocSkewedBuffer } from '../util/skewedBuffer.js';

/** Logical block size O_DIRECT requests are aligned to. 4096 also satisfies 512-byte devices. */
export const DIRECT_ALIGNMENT = 4096;
/** Zeros are written from one shared buffer of this size. */
const ZERO_BUFFER_BYTES = 1 << 20;
/** A probe read long enough to cross a page, so it sees the device's real memory-alignment rule. */
const PROBE_BYTES = 2 * DIRECT_ALIGNMENT;
/** malloc aligns to 16 bytes, so an aligned view is found among offsets that are multiples of 16. */
const PROBE_STEP = 16;
/** Places of a device an inconclusive alignment probe is tried at (a sparse file's data may be anywhere). */
const PROBE_PLACES = 16;

/** Where alignment probes read: the start, then evenly through the device. */
function probeOffsets(size: number): number[] {
  const last = Math.floor((size - PROBE_BYTES) / DIRECT_ALIGNMENT);
  const out = new Set<number>([0]);
  for (let i = 1; i < PROBE_PLACES; i++) out.add(Math.floor((last * i) / (PROBE_PLACES - 1)) * DIRECT_ALIGNMENT);
  return [...out];
}

/** Buffers handed out by `allocBuffer` (of any FileDevice on this thread), with the offset of their aligned start. */
const alignedBase = new WeakMap<ArrayBufferLike, number>();

let zeroBuffer: Buffer | undefined;
function zeros(): Buffer {
  zeroBuffer ??= Buffer.alloc(ZERO_BUFFER_BYTES);
  return zeroBuffer;
}

/** Size of a block device, which stat reports as 0: read from sysfs by its device number. */
async function blockDeviceSize(st: Stats, path: string): Promise<number> {
  const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
  try {
    const sectors = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
    return Number(sectors.trim()) * 512;
  } catch (err) {
    throw toIoError(err, 'open', `${path} (reading its size from sysfs)`);
  }
}

/**
 * A regular file or block device, read and written with positioned I/O (pread/pwrite) through
 * node:fs/promises. With `direct`, aligned requests go through a second, O_DIRECT handle and the
 * unaligned rest (a file's tail) through the buffered one; Linux keeps the two coherent.
 */
export class FileDevice implements BlockDevice {
  readonly description: string;
  readonly readOnly: boolean;
  readonly blockSize = 1;
  readonly maxRequest = 0x7fff_f000; // Linux caps one read/write call at this many bytes
  readonly efficientZeroes = false;
  #size: number;
  readonly #handle: FileHandle;
  readonly #direct: FileHandle | undefined;
  #scratch: Promise<FileHandle | undefined> | undefined;

  private constructor(path: string, handle: FileHandle, direct: FileHandle | undefined, size: number, readOnly: boolean) {
    this.description = path;
    this.#handle = handle;
    this.#direct = direct;
    this.#size = size;
    this.readOnly = readOnly;
  }

  /** Opens an existing file or block device. */
  static async open(spec: FileDeviceSpec): Promise<FileDevice> {
    const writable = spec.writable === true;
    const flags = writable ? constants.O_RDWR : constants.O_RDONLY;
    let handle: FileHandle;
    try {
      handle = await open(spec.path, flags);
    } catch (err) {
      throw openError(err, spec.path, spec.role ?? 'source');
    }
    try {
      const st = await handle.stat();
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new DeviceError(ErrorCode.SOURCE_NOT_AN_IMAGE, spec.path, `${spec.role ?? 'source'} ${spec.path} is not a regular file or block device`);
      }
      const size = st.isBlockDevice() ? await blockDeviceSize(st, spec.path) : st.size;
      const direct = spec.direct ? await open(spec.path, flags | constants.O_DIRECT) : undefined;
      return new FileDevice(spec.path, handle, direct, size, !writable);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  get size(): number {
    return this.#size;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    let fh = this.#pick(buf, offset);
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesRead } = await this.#retryBuffered(fh, (h) => h.read(buf, done, buf.length - done, offset + done), (h) => (fh = h));
        if (bytesRead === 0) {
          throw new IoError('EIO', 'read', `read past the end of ${this.description} at offset ${offset + done} (the file shrank?)`, {
            offset: offset + done,
            length: buf.length - done,
          });
        }
        done += bytesRead;
      }
    } catch (err) {
      throw toIoError(err, 'read', this.description, offset, buf.length);
    }
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    let fh = this.#pick(data, offset);
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.#retryBuffered(fh, (h) => h.write(data, done, data.length - done, offset + done), (h) => (fh = h));
        done += bytesWritten;
      }
    } catch (err) {
      throw toIoError(err, 'write', this.description, offset, data.length);
    }
    if (offset + data.length > this.#size) this.#size = offset + data.length;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const z = zeros();
    for (let at = offset; at < offset + length; at += z.length) {
      await this.write(z.subarray(0, Math.min(z.length, offset + length - at)), at);
    }
  }

  /** Node has no fallocate(PUNCH_HOLE): a discard leaves the data, which NBD TRIM's contract allows. */
  async discard(_offset: number, _length: number): Promise<void> {}

  async flush(): Promise<void> {
    try {
      await this.#handle.datasync();
    } catch (err) {
      throw toIoError(err, 'flush', this.description);
    }
  }

  /** Changes the size of a regular file. */
  async truncate(size: number): Promise<void> {
    try {
      await this.#handle.truncate(size);
      this.#size = size;
    } catch (err) {
      throw toIoError(err, 'truncate', this.description);
    }
  }

  async allocBuffer(size: number): Promise<Buffer> {
    if (!this.#direct) return allocSkewedBuffer(size); // page-cache copies into page-aligned memory are slow
    const raw = Buffer.allocUnsafeSlow(size + DIRECT_ALIGNMENT);
    const base = await this.#probeAlignment(raw);
    if (base < 0) return raw.subarray(0, size); // too small to probe: #pick sends its I/O through the buffered handle
    alignedBase.set(raw.buffer, base);
    return raw.subarray(base, base + size);
  }

  async close(): Promise<void> {
    const scratch = await this.#scratch;
    await Promise.all([this.#handle.close(), this.#direct?.close(), scratch?.close()]);
  }

  /**
   * A buffer's address cannot be read from JavaScript, but a misaligned O_DIRECT request fails
   * with EINVAL, so the first offset into `raw` whose probe succeeds starts an aligned view
   * (buffers never move). A probe only proves something where the kernel does DMA: a read of a
   * hole succeeds at any alignment (a new target is all hole). So an inconclusive read probe is
   * followed by a write probe on a scratch file of the same file system (created and unlinked at
   * once; the device itself is never written), then by read probes at other places.
   */
  async #probeAlignment(raw: Buffer): Promise<number> {
    if (this.#size < PROBE_BYTES) return -1;
    const first = await this.#probeAt(raw, (base) => this.#direct!.read(raw, base, PROBE_BYTES, 0));
    if (first.proven) return first.base;
    const scratch = await this.#scratchFile();
    if (scratch) {
      // A full file system (ENOSPC, EDQUOT) makes the write probe inconclusive, not the copy fail.
      const written = await this.#probeAt(raw, (base) => scratch.write(raw, base, PROBE_BYTES, 0)).catch(() => undefined);
      if (written?.proven) return written.base;
    }
    for (const at of probeOffsets(this.#size).slice(1)) {
      const found = await this.#probeAt(raw, (base) => this.#direct!.read(raw, base, PROBE_BYTES, at));
      if (found.proven) return found.base;
    }
    return first.base;
  }

  /** An unlinked O_DIRECT file beside a regular file, for write probes (undefined where none can be made). */
  #scratchFile(): Promise<FileHandle | undefined> {
    this.#scratch ??= (async () => {
      const path = join(dirname(this.description), `.blockmirror-probe-${process.pid}-${randomBytes(6).toString('hex')}`);
      try {
        if (!(await this.#handle.stat()).isFile()) return undefined;
        const handle = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT, 0o600);
        await unlink(path);
        return handle;
      } catch (err) {
        // Linux may create the file and then refuse O_DIRECT (EINVAL): it must not stay behind.
        if (errnoOf(err) !== 'EEXIST') await unlink(path).catch(() => undefined);
        return undefined;
      }
    })();
    return this.#scratch;
  }

  /**
   * The first base at which `attempt` succeeds, and whether that is proven: some other base
   * failed with EINVAL (a base before it, or the one after it).
   */
  async #probeAt(raw: Buffer, attempt: (base: number) => Promise<unknown>): Promise<{ base: number; proven: boolean }> {
    const works = async (base: number): Promise<boolean> => {
      try {
        await attempt(base);
        return true;
      } catch (err) {
        if (errnoOf(err) !== 'EINVAL') throw toIoError(err, 'read', `${this.description} (O_DIRECT alignment probe)`);
        return false;
      }
    };
    for (let base = 0; base < DIRECT_ALIGNMENT; base += PROBE_STEP) {
      if (!(await works(base))) continue;
      return { base, proven: base > 0 || !(await works(base + PROBE_STEP)) };
    }
    return { base: -1, proven: false };
  }

  /**
   * Runs `op` on `fh`; if an O_DIRECT call is refused (EINVAL: an alignment this device's probe
   * did not see), runs it again on the buffered handle and tells `switchTo` to keep using that.
   */
  async #retryBuffered<T>(fh: FileHandle, op: (h: FileHandle) => Promise<T>, switchTo: (h: FileHandle) => void): Promise<T> {
    try {
      return await op(fh);
    } catch (err) {
      if (fh !== this.#direct || errnoOf(err) !== 'EINVAL') throw err;
      switchTo(this.#handle);
      return op(this.#handle);
    }
  }

  #pick(buf: Uint8Array, offset: number): FileHandle {
    if (!this.#direct) return this.#handle;
    const base = alignedBase.get(buf.buffer);
    const aligned =
      base !== undefined &&
      (buf.byteOffset - base) % DIRECT_ALIGNMENT === 0 &&
      offset % DIRECT_ALIGNMENT === 0 &&
      buf.length % DIRECT_ALIGNMENT === 0;
    return aligned ? this.#direct : this.#handle;
  }
}

function openError(err: unknown, path: string, role: DeviceRole): Error {
  const errno = errnoOf(err);
  const missing = errno === 'ENOENT' || errno === 'ENOTDIR';
  if (errno === 'EISDIR') {
    const code = role === 'target' ? ErrorCode.TARGET_IS_DIRECTORY : ErrorCode.SOURCE_NOT_AN_IMAGE;
    return new DeviceError(code, path, `${role} ${path} is a directory`, { cause: err });
  }
  if (role === 'source' && missing) {
    return new DeviceError(ErrorCode.SOURCE_NOT_FOUND, path, `source ${path} does not exist`, { cause: err });
  }
  if (role === 'source' && (errno === 'EACCES' || errno === 'EPERM')) {
    return new DeviceError(ErrorCode.SOURCE_UNREADABLE, path, `source ${path} cannot be read (${errno})`, { cause: err });
  }
  if (role === 'target' && (missing || errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS')) {
    return new DeviceError(ErrorCode.TARGET_UNWRITABLE, path, `target ${path} cannot be opened for writing (${errno})`, { cause: err });
  }
  return toIoError(err, 'open', path);
}

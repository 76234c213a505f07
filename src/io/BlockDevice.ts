import type { FaultyDeviceSpec } from './FaultyDevice.js';

/**
 * What every source and target looks like to the copy engine: a fixed-size array of bytes with
 * positioned reads and writes (pread/pwrite), flush, and zeroing.
 */
export interface BlockDevice {
  /** The path or URI, for messages. */
  readonly description: string;
  /** Size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Offsets and lengths of requests should be multiples of this (1: any). */
  readonly blockSize: number;
  /** Largest single request the device takes; the engine splits larger ones. */
  readonly maxRequest: number;
  /** True when `writeZeroes` costs no data transfer (NBD WRITE_ZEROES), so a zero chunk is cheaper zeroed than checked. */
  readonly efficientZeroes: boolean;
  /** Reads exactly `buf.length` bytes at `offset` (never past the end). */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** Writes all of `data` at `offset`. */
  write(data: Uint8Array, offset: number): Promise<void>;
  /** Makes `length` bytes at `offset` read as zeros. */
  writeZeroes(offset: number, length: number): Promise<void>;
  /** Tells the device the range is no longer needed; it reads back as zeros or as before. */
  discard(offset: number, length: number): Promise<void>;
  /** Makes every completed write durable (fdatasync, NBD FLUSH). */
  flush(): Promise<void>;
  /** A buffer of `size` bytes that this device can do I/O from (aligned when the device needs it). */
  allocBuffer(size: number): Promise<Buffer>;
  /**
   * Allocation status from `offset` (NBD `base:allocation`): consecutive extents, the first
   * starting at `offset`, covering at least one byte and possibly less or (in the last extent)
   * more than `length`. Optional: a device that cannot tell leaves it out, and callers treat the
   * whole device as allocated data.
   */
  blockStatus?(offset: number, length: number): Promise<readonly AllocationExtent[]>;
  close(): Promise<void>;
}

/** One extent of allocation status, as NBD's `base:allocation` context reports it. */
export interface AllocationExtent {
  readonly length: number;
  /** Not allocated on the underlying storage (it may still read as data, from a backing file say). */
  readonly hole: boolean;
  /** Reads as zeros: a copy may skip reading it. */
  readonly zero: boolean;
}

/** A file or block device, opened by path. */
export interface FileDeviceSpec {
  readonly kind: 'file';
  readonly path: string;
  /** Bypass the page cache with O_DIRECT where requests are aligned. */
  readonly direct?: boolean;
  readonly writable?: boolean;
  /** Which side of a copy this is, for error codes and messages (default: `source`). */
  readonly role?: DeviceRole;
}

/** An NBD export, opened by URI (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`). */
export interface NbdDeviceSpec {
  readonly kind: 'nbd';
  readonly uri: string;
  /** Which side of a copy this is (default: `source`); a read-only export as `target` is refused. */
  readonly role?: DeviceRole;
  /** Open for writing (default false); refused with `BM_ERR_TARGET_READ_ONLY` if the export is read-only. */
  readonly writable?: boolean;
}

/** The side of a copy a device is on. */
export type DeviceRole = 'source' | 'target';

/**
 * Everything a thread needs to open its own handle on a device: plain data, so it can be posted to
 * a worker thread (each worker keeps its own handles; handles cannot cross threads).
 */
export type DeviceSpec = FileDeviceSpec | NbdDeviceSpec | FaultyDeviceSpec;

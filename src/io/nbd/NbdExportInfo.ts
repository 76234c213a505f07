import { NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES } from './protocol.js';

/** What the handshake settled about an export: its size, what it can do, how requests must be shaped. */
export interface NbdExportInfo {
  /** The export name the client asked for. */
  readonly exportName: string;
  /** The server's description of the export, where it sent one. */
  readonly description: string | undefined;
  readonly size: number;
  /** Transmission flags (NBD_FLAG_*). */
  readonly transmissionFlags: number;
  /** Offsets and lengths must be multiples of this (1 unless the server said otherwise). */
  readonly minBlockSize: number;
  /** Requests aligned to this avoid read-modify-write on the server. */
  readonly preferredBlockSize: number;
  /** Largest READ, WRITE or WRITE_ZEROES the server takes in one request. */
  readonly maxBlockSize: number;
  /** True when the server sent NBD_INFO_BLOCK_SIZE (the values above are its own, not defaults). */
  readonly blockSizeAdvertised: boolean;
  /** True when structured replies were negotiated. */
  readonly structuredReplies: boolean;
  /** Id of the negotiated `base:allocation` metadata context; undefined when the server has none. */
  readonly allocationContextId: number | undefined;
  /** True when the transmission phase was entered with NBD_OPT_GO (false: the old NBD_OPT_EXPORT_NAME). */
  readonly negotiatedWithGo: boolean;
}

/** Default block size constraints when a server advertises none (proto.md "Block size constraints"). */
export const DEFAULT_MIN_BLOCK_SIZE = 1;
export const DEFAULT_PREFERRED_BLOCK_SIZE = 4096;
/** A client wanting interoperability caps READ and WRITE at 32 MiB when the server sets no maximum. */
export const DEFAULT_MAX_BLOCK_SIZE = 32 << 20;

export function isReadOnly(info: NbdExportInfo): boolean {
  return (info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
}
export function canFlush(info: NbdExportInfo): boolean {
  return (info.transmissionFlags & NBD_FLAG_SEND_FLUSH) !== 0;
}
export function canTrim(info: NbdExportInfo): boolean {
  return (info.transmissionFlags & NBD_FLAG_SEND_TRIM) !== 0;
}
export function canWriteZeroes(info: NbdExportInfo): boolean {
  return (info.transmissionFlags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0;
}
/** True when a flush on any one connection covers writes completed on all of them. */
export function canMultiConn(info: NbdExportInfo): boolean {
  return (info.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN) !== 0;
}

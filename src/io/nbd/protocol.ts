/**
 * NBD protocol constants, as NetworkBlockDevice's doc/proto.md defines them: magics, handshake
 * and transmission flags, options and their replies, commands, structured reply chunk types,
 * error values, and the fixed sizes of every header. Client and server both read them from here.
 */

/** Default TCP port (IANA). */
export const NBD_DEFAULT_PORT = 10809;

// ── Magics ──────────────────────────────────────────────────────────────────────────────────
/** 'NBDMAGIC', the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': follows NBD_MAGIC in newstyle negotiation, and starts every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Oldstyle negotiation's second magic (unsupported: blockmirror speaks fixed newstyle only). */
export const NBD_CLISERV_MAGIC = 0x00420281861253n;
/** Starts every option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ── Handshake flags (server, 16 bits) and client flags (32 bits) ───────────────────────────
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ── Transmission flags (16 bits, per export) ───────────────────────────────────────────────
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
/** A flush (or FUA) on one connection covers writes completed on every connection. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ── Options ────────────────────────────────────────────────────────────────────────────────
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// ── Option replies ─────────────────────────────────────────────────────────────────────────
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
/** Error replies have bit 31 set. */
export const NBD_REP_FLAG_ERROR = 0x8000_0000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

// ── NBD_REP_INFO types ─────────────────────────────────────────────────────────────────────
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ── Commands and command flags ─────────────────────────────────────────────────────────────
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ── Structured reply chunks ────────────────────────────────────────────────────────────────
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** Error chunk types have bit 15 set. */
export const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR + 2;

// ── base:allocation ────────────────────────────────────────────────────────────────────────
export const BASE_ALLOCATION = 'base:allocation';
/** The extent is not allocated on the server's storage (it may still not read as zeros). */
export const NBD_STATE_HOLE = 1 << 0;
/** The extent reads as zeros. */
export const NBD_STATE_ZERO = 1 << 1;

// ── Fixed sizes ────────────────────────────────────────────────────────────────────────────
/** NBDMAGIC + IHAVEOPT + 16-bit handshake flags. */
export const SERVER_GREETING_BYTES = 18;
/** IHAVEOPT + option + length. */
export const OPTION_HEADER_BYTES = 16;
/** Reply magic + option + reply type + length. */
export const OPTION_REPLY_HEADER_BYTES = 20;
/** Size + flags (+ 124 zero bytes unless NO_ZEROES) after NBD_OPT_EXPORT_NAME. */
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_ZERO_PAD_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** Strings (export names, messages) must be no longer than this. */
export const NBD_MAX_STRING_BYTES = 4096;
/** Requests with a payload up to this size must never be treated as an attack (proto.md). */
export const NBD_MAX_SAFE_PAYLOAD = 32 << 20;

// ── Errors ─────────────────────────────────────────────────────────────────────────────────
/** Error values on the wire, by errno name (proto.md "Error values"; Linux numbering). */
export const NBD_ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** An error value the protocol defines, by errno name. */
export type NbdErrnoName = keyof typeof NBD_ERRNO;

const ERRNO_BY_VALUE = new Map<number, NbdErrnoName>(
  Object.entries(NBD_ERRNO).map(([name, value]) => [value, name as NbdErrnoName]),
);

/**
 * The errno name of an error value a server sent. proto.md tells clients to treat a value it
 * does not define as EINVAL rather than as fatal.
 */
export function errnoNameOf(value: number): NbdErrnoName {
  return ERRNO_BY_VALUE.get(value) ?? 'EINVAL';
}

/** Local errno names that have no NBD value of their own, folded into the nearest one. */
const ERRNO_ALIASES: Readonly<Record<string, NbdErrnoName>> = {
  EACCES: 'EPERM',
  EROFS: 'EPERM',
  EDQUOT: 'ENOSPC',
  EFBIG: 'ENOSPC',
  EOPNOTSUPP: 'ENOTSUP',
  ENOSYS: 'ENOTSUP',
};

/** The wire value a server sends for a local errno name (EIO for anything without a match). */
export function nbdErrorValueOf(errno: string): number {
  const name = (errno in NBD_ERRNO ? errno : ERRNO_ALIASES[errno]) as NbdErrnoName | undefined;
  return name === undefined ? NBD_ERRNO.EIO : NBD_ERRNO[name];
}

/** Names of options, commands and option replies, for messages. */
export function optionName(option: number): string {
  const names: Record<number, string> = {
    [NBD_OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
    [NBD_OPT_ABORT]: 'NBD_OPT_ABORT',
    [NBD_OPT_LIST]: 'NBD_OPT_LIST',
    [NBD_OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
    [NBD_OPT_INFO]: 'NBD_OPT_INFO',
    [NBD_OPT_GO]: 'NBD_OPT_GO',
    [NBD_OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
    [NBD_OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
    [NBD_OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  };
  return names[option] ?? `option ${option}`;
}

export function commandName(command: number): string {
  const names: Record<number, string> = {
    [NBD_CMD_READ]: 'NBD_CMD_READ',
    [NBD_CMD_WRITE]: 'NBD_CMD_WRITE',
    [NBD_CMD_DISC]: 'NBD_CMD_DISC',
    [NBD_CMD_FLUSH]: 'NBD_CMD_FLUSH',
    [NBD_CMD_TRIM]: 'NBD_CMD_TRIM',
    [NBD_CMD_CACHE]: 'NBD_CMD_CACHE',
    [NBD_CMD_WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES',
    [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
  };
  return names[command] ?? `command ${command}`;
}

export function optionReplyName(reply: number): string {
  const names: Record<number, string> = {
    [NBD_REP_ACK]: 'NBD_REP_ACK',
    [NBD_REP_SERVER]: 'NBD_REP_SERVER',
    [NBD_REP_INFO]: 'NBD_REP_INFO',
    [NBD_REP_META_CONTEXT]: 'NBD_REP_META_CONTEXT',
    [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
    [NBD_REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
    [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
    [NBD_REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
    [NBD_REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
    [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
    [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
    [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
    [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
  };
  return names[reply] ?? `reply ${reply >>> 0}`;
}

/**
 * Text a peer sent (an error message, a description), safe to show to a user: decoded as UTF-8,
 * with control characters (terminal escapes among them) and bidirectional overrides replaced by
 * U+FFFD, and cut to `max` characters.
 */
export function peerText(bytes: Uint8Array, max = 512): string {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .toString('utf8')
    .replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '\ufffd');
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** Reads a 64-bit unsigned big-endian offset or size as a number (exact below 2^53). */
export function readUInt64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * 2 ** 32 + buf.readUInt32BE(at + 4);
}

/** Writes a number (a safe integer, at least 0) as a 64-bit unsigned big-endian value. */
export function writeUInt64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/** A 32-bit big-endian field, for building option data. */
export function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(value);
  return b;
}

/** A 16-bit big-endian field, for building option data. */
export function u16(value: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(value);
  return b;
}

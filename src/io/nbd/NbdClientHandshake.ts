/**
 * The client's side of the fixed-newstyle handshake: connect, greet, haggle options (structured
 * replies, `base:allocation`, NBD_OPT_GO with block sizes, or the old NBD_OPT_EXPORT_NAME), and
 * hand over a socket in the transmission phase. Also NBD_OPT_LIST, for listing a server's exports.
 */
import { connect, type Socket } from 'node:net';
import { ErrorCode, NbdError } from '../../errors.js';
import {
  DEFAULT_MAX_BLOCK_SIZE,
  DEFAULT_MIN_BLOCK_SIZE,
  DEFAULT_PREFERRED_BLOCK_SIZE,
  type NbdExportInfo,
} from './NbdExportInfo.js';
import { formatNbdUri, type NbdAddress } from './NbdUri.js';
import {
  BASE_ALLOCATION,
  EXPORT_NAME_REPLY_BYTES,
  EXPORT_NAME_ZERO_PAD_BYTES,
  NBD_CLISERV_MAGIC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  SERVER_GREETING_BYTES,
  optionName,
  optionReplyName,
  peerText,
  readUInt64,
  u32,
} from './protocol.js';
import { SocketReader } from './SocketReader.js';

/** Option replies longer than this are a broken or hostile server. */
const MAX_OPTION_REPLY_BYTES = 1 << 20;
/** Default time allowed from connecting to the transmission phase. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

/** How to connect and what to negotiate. */
export interface NbdConnectOptions {
  /** Ask for structured replies (default true): needed for block status, and reads that fail cleanly. */
  readonly structuredReplies?: boolean;
  /** Ask for the `base:allocation` metadata context (default true), so holes can be skipped. */
  readonly allocation?: boolean;
  /**
   * Milliseconds from connecting to the transmission phase (default 30 s). A server at its
   * connection limit (qemu-nbd takes one client unless started with --shared) accepts and then
   * says nothing; this turns that wait into an error.
   */
  readonly handshakeTimeoutMs?: number;
  /** Aborting gives up on the connection (and the handshake) at once. */
  readonly signal?: AbortSignal;
}

/** A socket in the transmission phase, with what was negotiated. */
export interface NegotiatedSocket {
  readonly socket: Socket;
  readonly reader: SocketReader;
  readonly info: NbdExportInfo;
}

/** One export of a server, as NBD_OPT_LIST names it. */
export interface NbdExportListing {
  readonly name: string;
  readonly description: string;
}

function connectionError(address: NbdAddress, why: string, cause?: unknown): NbdError {
  return new NbdError(ErrorCode.NBD_CONNECTION, `NBD server ${formatNbdUri(address)}: ${why}`, { cause });
}

function protocolError(address: NbdAddress, why: string): NbdError {
  return new NbdError(ErrorCode.NBD_PROTOCOL, `NBD server ${formatNbdUri(address)} broke the protocol: ${why}`);
}

/** Opens the socket (Unix or TCP) an address names. */
export function openSocket(address: NbdAddress): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      address.transport === 'unix' ? connect({ path: address.socket }) : connect({ host: address.host, port: address.port });
    const onError = (err: Error): void => {
      socket.destroy();
      reject(connectionError(address, `cannot connect (${(err as NodeJS.ErrnoException).code ?? err.message})`, err));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      if (address.transport === 'tcp') {
        // Requests are batched by cork/uncork; Nagle would only add latency on top.
        socket.setNoDelay(true);
        socket.setKeepAlive(true, 10_000);
      }
      resolve(socket);
    });
  });
}

/** Runs `work` on a fresh connection, failing it if the handshake outlasts its timeout or is aborted. */
async function withHandshakeSocket<T>(
  address: NbdAddress,
  options: Pick<NbdConnectOptions, 'handshakeTimeoutMs' | 'signal'>,
  work: (socket: Socket, reader: SocketReader) => Promise<T>,
): Promise<T> {
  const timeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  options.signal?.throwIfAborted();
  const socket = await openSocket(address);
  const reader = new SocketReader(socket); // it also keeps socket errors from being thrown uncaught
  const timer = setTimeout(() => {
    socket.destroy(connectionError(address, `no handshake within ${timeoutMs / 1000} s (is the server at its connection limit?)`));
  }, timeoutMs);
  const onAbort = (): void => void socket.destroy(connectionError(address, 'connection attempt abandoned'));
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await work(socket, reader);
  } catch (err) {
    socket.destroy();
    if (err instanceof NbdError) throw err;
    const reason = reader.endReason ?? err;
    if (reason instanceof NbdError) throw reason;
    throw connectionError(address, `connection lost during the handshake (${(reason as Error).message ?? String(reason)})`, reason);
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onAbort);
  }
}

/** Reads the server's greeting, answers with client flags; returns whether the server speaks fixed newstyle and NO_ZEROES was agreed. */
async function greet(address: NbdAddress, socket: Socket, reader: SocketReader): Promise<{ fixed: boolean; noZeroes: boolean }> {
  let hello: Buffer;
  try {
    hello = await reader.read(SERVER_GREETING_BYTES - 2);
  } catch (err) {
    if (err instanceof NbdError || reader.buffered > 0) throw err;
    // Closed before saying a word: what a server at its connection limit does (ours, nbdkit, qemu-nbd without --shared).
    throw connectionError(address, 'the server closed the connection before greeting us (is it at its connection limit?)', err);
  }
  if (hello.readBigUInt64BE(0) !== NBD_MAGIC) throw protocolError(address, 'this is not an NBD server (no NBDMAGIC greeting)');
  const second = hello.readBigUInt64BE(8);
  if (second === NBD_CLISERV_MAGIC) {
    throw new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD server ${formatNbdUri(address)} speaks only the oldstyle handshake; blockmirror needs newstyle`);
  }
  if (second !== NBD_OPTS_MAGIC) throw protocolError(address, 'unknown handshake magic');
  const flags = (await reader.read(2)).readUInt16BE(0);
  const fixed = (flags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (flags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE((fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  socket.write(clientFlags);
  return { fixed, noZeroes };
}

function sendOption(socket: Socket, option: number, data: Buffer = Buffer.alloc(0)): void {
  const header = Buffer.allocUnsafe(OPTION_HEADER_BYTES);
  header.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(data.length, 12);
  socket.write(Buffer.concat([header, data]));
}

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
}

async function readOptionReply(address: NbdAddress, reader: SocketReader, option: number): Promise<OptionReply> {
  const header = await reader.read(OPTION_REPLY_HEADER_BYTES);
  if (header.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw protocolError(address, `bad option reply magic after ${optionName(option)}`);
  const repliedTo = header.readUInt32BE(8);
  const type = header.readUInt32BE(12);
  const length = header.readUInt32BE(16);
  if (repliedTo !== option) throw protocolError(address, `reply to ${optionName(repliedTo)} while waiting for ${optionName(option)}`);
  if (length > MAX_OPTION_REPLY_BYTES) throw protocolError(address, `${length}-byte reply to ${optionName(option)}`);
  const data = Buffer.allocUnsafe(length);
  await reader.readInto(data);
  return { type, data };
}

function isError(type: number): boolean {
  return (type & NBD_REP_FLAG_ERROR) !== 0;
}

/** The error an option error reply means, with the server's message where it sent one. */
function optionFailure(address: NbdAddress, option: number, reply: OptionReply, exportName: string): NbdError {
  // The server's words, but never its control characters: a hostile server must not write to our user's terminal.
  const said = reply.data.length > 0 ? `: ${peerText(reply.data)}` : '';
  const where = formatNbdUri(address);
  switch (reply.type) {
    case NBD_REP_ERR_UNKNOWN:
      return new NbdError(ErrorCode.NBD_NO_EXPORT, `NBD server ${where} has no export named '${exportName}'${said}`);
    case NBD_REP_ERR_TLS_REQD:
      return new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD server ${where} requires TLS, which blockmirror does not speak${said}`);
    case NBD_REP_ERR_POLICY:
      return new NbdError(ErrorCode.NBD_CONNECTION, `NBD server ${where} refused ${optionName(option)} by policy${said}`);
    default:
      return new NbdError(ErrorCode.NBD_PROTOCOL, `NBD server ${where} answered ${optionName(option)} with ${optionReplyName(reply.type)}${said}`);
  }
}

function nameAndQueries(exportName: string, queries: readonly string[]): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const parts = [u32(name.length), name, u32(queries.length)];
  for (const q of queries) {
    const b = Buffer.from(q, 'utf8');
    parts.push(u32(b.length), b);
  }
  return Buffer.concat(parts);
}

/** Returns whether the server agreed to structured replies. */
async function negotiateStructuredReplies(address: NbdAddress, socket: Socket, reader: SocketReader): Promise<boolean> {
  sendOption(socket, NBD_OPT_STRUCTURED_REPLY);
  const reply = await readOptionReply(address, reader, NBD_OPT_STRUCTURED_REPLY);
  if (reply.type === NBD_REP_ACK) return true;
  if (isError(reply.type)) return false; // UNSUP and friends: carry on with simple replies
  throw protocolError(address, `unexpected ${optionReplyName(reply.type)} to NBD_OPT_STRUCTURED_REPLY`);
}

/** Selects `base:allocation`; returns its context id, or undefined when the server has none. */
async function negotiateAllocation(address: NbdAddress, socket: Socket, reader: SocketReader, exportName: string): Promise<number | undefined> {
  sendOption(socket, NBD_OPT_SET_META_CONTEXT, nameAndQueries(exportName, [BASE_ALLOCATION]));
  let id: number | undefined;
  for (;;) {
    const reply = await readOptionReply(address, reader, NBD_OPT_SET_META_CONTEXT);
    if (reply.type === NBD_REP_ACK) return id;
    if (isError(reply.type)) {
      if (reply.type === NBD_REP_ERR_UNKNOWN) throw optionFailure(address, NBD_OPT_SET_META_CONTEXT, reply, exportName);
      return undefined; // no metadata contexts here: copy without hole skipping
    }
    if (reply.type !== NBD_REP_META_CONTEXT || reply.data.length < 4) {
      throw protocolError(address, `unexpected ${optionReplyName(reply.type)} to NBD_OPT_SET_META_CONTEXT`);
    }
    if (reply.data.subarray(4).toString('utf8') === BASE_ALLOCATION) id = reply.data.readUInt32BE(0);
  }
}

interface GoResult {
  readonly size: number;
  readonly transmissionFlags: number;
  readonly description: string | undefined;
  readonly blockSize: readonly [number, number, number] | undefined;
}

/** NBD_OPT_GO asking for block sizes; undefined when the server does not know the option. */
async function go(address: NbdAddress, socket: Socket, reader: SocketReader, exportName: string): Promise<GoResult | undefined> {
  const name = Buffer.from(exportName, 'utf8');
  const data = Buffer.allocUnsafe(4 + name.length + 2 + 4);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  data.writeUInt16BE(2, 4 + name.length);
  data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 6 + name.length);
  data.writeUInt16BE(NBD_INFO_DESCRIPTION, 8 + name.length);
  sendOption(socket, NBD_OPT_GO, data);
  let size: number | undefined;
  let transmissionFlags = 0;
  let description: string | undefined;
  let blockSize: [number, number, number] | undefined;
  for (;;) {
    const reply = await readOptionReply(address, reader, NBD_OPT_GO);
    if (reply.type === NBD_REP_ACK) {
      if (size === undefined) throw protocolError(address, 'NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
      return { size, transmissionFlags, description, blockSize };
    }
    if (reply.type === NBD_REP_ERR_UNSUP) return undefined;
    if (isError(reply.type)) throw optionFailure(address, NBD_OPT_GO, reply, exportName);
    if (reply.type !== NBD_REP_INFO || reply.data.length < 2) throw protocolError(address, `unexpected ${optionReplyName(reply.type)} to NBD_OPT_GO`);
    const info = reply.data;
    switch (info.readUInt16BE(0)) {
      case NBD_INFO_EXPORT:
        if (info.length !== 12) throw protocolError(address, `NBD_INFO_EXPORT of ${info.length} bytes`);
        size = readUInt64(info, 2);
        transmissionFlags = info.readUInt16BE(10);
        break;
      case NBD_INFO_BLOCK_SIZE:
        if (info.length !== 14) throw protocolError(address, `NBD_INFO_BLOCK_SIZE of ${info.length} bytes`);
        blockSize = [info.readUInt32BE(2), info.readUInt32BE(6), info.readUInt32BE(10)];
        break;
      case NBD_INFO_DESCRIPTION:
        description = peerText(info.subarray(2), 4096);
        break;
      default:
        break; // information we did not ask for and do not know: ignore, as proto.md says
    }
  }
}

/** The old way into transmission: no error reply is possible, an unknown export just closes the connection. */
async function exportName(address: NbdAddress, socket: Socket, reader: SocketReader, name: string, noZeroes: boolean): Promise<GoResult> {
  sendOption(socket, NBD_OPT_EXPORT_NAME, Buffer.from(name, 'utf8'));
  let reply: Buffer;
  try {
    reply = await reader.read(EXPORT_NAME_REPLY_BYTES);
  } catch (err) {
    throw new NbdError(ErrorCode.NBD_NO_EXPORT, `NBD server ${formatNbdUri(address)} closed the connection on export '${name}' (no such export?)`, {
      cause: err,
    });
  }
  const result = { size: readUInt64(reply, 0), transmissionFlags: reply.readUInt16BE(8), description: undefined, blockSize: undefined };
  if (!noZeroes) await reader.skip(EXPORT_NAME_ZERO_PAD_BYTES);
  return result;
}

/** Checks advertised block sizes against proto.md's rules, so a broken server cannot make us misalign. */
function checkBlockSizes(address: NbdAddress, [min, preferred, max]: readonly [number, number, number]): void {
  const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(min) || min > 65536) throw protocolError(address, `minimum block size ${min} is not a power of two up to 64 KiB`);
  if (!pow2(preferred) || preferred < min) throw protocolError(address, `preferred block size ${preferred} is invalid`);
  if (max !== 0xffff_ffff && (max < min || max % min !== 0)) throw protocolError(address, `maximum block size ${max} is invalid`);
}

/**
 * Connects to an NBD server and negotiates the export the address names, ready for transmission.
 * Throws {@link NbdError}: `BM_ERR_NBD_CONNECTION` (cannot connect, lost), `BM_ERR_NBD_NO_EXPORT`,
 * `BM_ERR_NBD_PROTOCOL`, `BM_ERR_NBD_UNSUPPORTED` (oldstyle, TLS).
 */
export async function connectAndNegotiate(address: NbdAddress, options: NbdConnectOptions = {}): Promise<NegotiatedSocket> {
  let reader!: SocketReader;
  let socket!: Socket;
  const info = await withHandshakeSocket(address, options, async (s, r) => {
    socket = s;
    reader = r;
    const { fixed, noZeroes } = await greet(address, s, r);
    const name = address.exportName;
    const structured = fixed && options.structuredReplies !== false && (await negotiateStructuredReplies(address, s, r));
    const allocationContextId =
      structured && options.allocation !== false ? await negotiateAllocation(address, s, r, name) : undefined;
    const viaGo = fixed ? await go(address, s, r, name) : undefined;
    const result = viaGo ?? (await exportName(address, s, r, name, noZeroes));
    if (!Number.isSafeInteger(result.size)) {
      // Offsets are JS numbers: past 2^53 they are no longer exact, and a copy would land in the wrong place.
      throw new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD server ${formatNbdUri(address)} offers an export of 2^53 bytes or more; blockmirror addresses at most 2^53 - 1`);
    }
    if (result.blockSize) checkBlockSizes(address, result.blockSize);
    const [min, preferred, max] = result.blockSize ?? [DEFAULT_MIN_BLOCK_SIZE, DEFAULT_PREFERRED_BLOCK_SIZE, DEFAULT_MAX_BLOCK_SIZE];
    const exportInfo: NbdExportInfo = {
      exportName: name,
      description: result.description,
      size: result.size,
      transmissionFlags: result.transmissionFlags,
      minBlockSize: min,
      preferredBlockSize: preferred,
      maxBlockSize: max,
      blockSizeAdvertised: result.blockSize !== undefined,
      structuredReplies: structured,
      // Block status needs the context to be set for the export that GO chose, which the fallback path also is.
      allocationContextId,
      negotiatedWithGo: viaGo !== undefined,
    };
    return exportInfo;
  });
  return { socket, reader, info };
}

/** Lists a server's exports (NBD_OPT_LIST), then leaves politely (NBD_OPT_ABORT). */
export async function listNbdExports(
  address: NbdAddress,
  options: Pick<NbdConnectOptions, 'handshakeTimeoutMs' | 'signal'> = {},
): Promise<NbdExportListing[]> {
  return withHandshakeSocket(address, options, async (socket, reader) => {
    const { fixed } = await greet(address, socket, reader);
    if (!fixed) throw new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD server ${formatNbdUri(address)} cannot list its exports (not fixed newstyle)`);
    sendOption(socket, NBD_OPT_LIST);
    const exports: NbdExportListing[] = [];
    for (;;) {
      const reply = await readOptionReply(address, reader, NBD_OPT_LIST);
      if (reply.type === NBD_REP_ACK) break;
      if (isError(reply.type)) throw optionFailure(address, NBD_OPT_LIST, reply, '');
      if (reply.type !== NBD_REP_SERVER || reply.data.length < 4) throw protocolError(address, `unexpected ${optionReplyName(reply.type)} to NBD_OPT_LIST`);
      const nameLength = reply.data.readUInt32BE(0);
      if (nameLength > reply.data.length - 4) throw protocolError(address, 'NBD_REP_SERVER name longer than its reply');
      exports.push({
        name: reply.data.subarray(4, 4 + nameLength).toString('utf8'),
        description: peerText(reply.data.subarray(4 + nameLength), 4096),
      });
    }
    sendOption(socket, NBD_OPT_ABORT);
    // The server may answer the abort or just close; either way we are done.
    await readOptionReply(address, reader, NBD_OPT_ABORT).catch(() => undefined);
    socket.end();
    return exports;
  });
}

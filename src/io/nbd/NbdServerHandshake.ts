/**
 * The server's side of the fixed-newstyle handshake: greet, answer options (list, info, structured
 * replies, metadata contexts) until the client picks an export, and say what was negotiated for
 * the transmission phase that {@link NbdServerSession} serves.
 */
import type { Socket } from 'node:net';
import { ErrorCode, NbdError } from '../../errors.js';
import type { BlockDevice } from '../BlockDevice.js';
import {
  BASE_ALLOCATION,
  EXPORT_NAME_ZERO_PAD_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAGIC,
  NBD_MAX_SAFE_PAYLOAD,
  NBD_MAX_STRING_BYTES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  SERVER_GREETING_BYTES,
  u16,
  u32,
  writeUInt64,
} from './protocol.js';
import type { SocketReader } from './SocketReader.js';

/** Option data longer than this is not a real client (names and queries are at most 4 KiB each): hang up. */
const MAX_OPTION_DATA_BYTES = 64 * 1024;
/** Options one client may send before it has to pick an export. */
const MAX_OPTIONS = 256;
/** Option replies the client has not read past which no further option is read until it does. */
const MAX_UNREAD_REPLY_BYTES = 1 << 20;
/** Context id our `base:allocation` gets in SET_META_CONTEXT replies (LIST replies use 0, as proto.md asks). */
export const ALLOCATION_CONTEXT_ID = 1;

/** An export as a session sees it: a device, its name, and whether clients may write. */
export interface ServedExport {
  readonly name: string;
  readonly description: string;
  readonly device: BlockDevice;
  readonly readOnly: boolean;
}

/** What the handshake needs from the server. */
export interface HandshakeHost {
  /** The export a client's name selects (the empty name: the default export), if any. */
  findExport(name: string): ServedExport | undefined;
  listExports(): readonly ServedExport[];
  /** True once the server is shutting down: options get NBD_REP_ERR_SHUTDOWN. */
  readonly shuttingDown: boolean;
  /** Milliseconds a client may take to pick an export before its socket is destroyed. */
  readonly handshakeTimeoutMs: number;
}

/** What the client chose and negotiated, for the transmission phase. */
export interface NegotiatedExport {
  readonly served: ServedExport;
  /** Structured replies were negotiated. */
  readonly structured: boolean;
  /** `base:allocation` was selected for this very export: block status may be asked. */
  readonly allocation: boolean;
}

/** The client broke the protocol in a way that leaves nothing to answer: hang up. */
export class HangUp extends NbdError {
  constructor(message: string) {
    super(ErrorCode.NBD_PROTOCOL, message);
  }
}

/**
 * One client's option phase, over its socket and reader. {@link NbdServerHandshake.run} resolves
 * once the client has picked an export; a client breaking the protocol gets a {@link HangUp}.
 */
export class NbdServerHandshake {
  readonly #socket: Socket;
  readonly #reader: SocketReader;
  readonly #host: HandshakeHost;
  #structured = false;
  #noZeroes = false;
  /** The export and contexts the last NBD_OPT_SET_META_CONTEXT selected. */
  #metaContext: { exportName: string; allocation: boolean } | undefined;
  #chosen: NegotiatedExport | undefined;

  constructor(socket: Socket, reader: SocketReader, host: HandshakeHost) {
    this.#socket = socket;
    this.#reader = reader;
    this.#host = host;
  }

  /**
   * Greets the client and answers its options. Resolves with the export it entered transmission
   * on, or undefined when it left in good order (NBD_OPT_ABORT, or NBD_OPT_EXPORT_NAME of an
   * export that does not exist, which only hanging up answers).
   */
  async run(): Promise<NegotiatedExport | undefined> {
    // The whole handshake, not each read: a client trickling a byte at a time is dropped as surely as a silent one.
    const timer = setTimeout(() => {
      const s = this.#host.handshakeTimeoutMs / 1000;
      this.#socket.destroy(new NbdError(ErrorCode.NBD_CONNECTION, `the client did not choose an export within ${s} s of connecting`));
    }, this.#host.handshakeTimeoutMs);
    try {
      return await this.#negotiate();
    } finally {
      clearTimeout(timer);
    }
  }

  async #negotiate(): Promise<NegotiatedExport | undefined> {
    const greeting = Buffer.allocUnsafe(SERVER_GREETING_BYTES);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
    greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    this.#socket.write(greeting);
    const clientFlags = (await this.#reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      throw new HangUp(`client sent unknown handshake flags 0x${clientFlags.toString(16)}`);
    }
    this.#noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    for (let n = 0; n < MAX_OPTIONS; n++) {
      await this.#repliesRead();
      const header = await this.#reader.read(OPTION_HEADER_BYTES);
      if (header.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw new HangUp('bad option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > MAX_OPTION_DATA_BYTES) throw new HangUp(`${length}-byte option data`);
      const data = Buffer.allocUnsafe(length);
      await this.#reader.readInto(data);
      if (await this.#option(option, data)) return this.#chosen;
    }
    throw new HangUp(`more than ${MAX_OPTIONS} options`);
  }

  /** Waits while the client leaves too many option replies unread (it may pipeline options, not ignore the answers). */
  async #repliesRead(): Promise<void> {
    while (this.#socket.writableLength > MAX_UNREAD_REPLY_BYTES && !this.#socket.destroyed) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.#socket.off('drain', done);
          this.#socket.off('close', done);
          resolve();
        };
        this.#socket.on('drain', done);
        this.#socket.on('close', done);
      });
    }
  }

  /** Answers one option; true once the transmission phase starts (or the client left). */
  async #option(option: number, data: Buffer): Promise<boolean> {
    if (this.#host.shuttingDown && option !== NBD_OPT_ABORT) {
      this.#optionReply(option, NBD_REP_ERR_SHUTDOWN, Buffer.from('the server is shutting down'));
      return false;
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        const exp = this.#host.findExport(data.toString('utf8'));
        if (!exp) return true; // hanging up: the only answer NBD_OPT_EXPORT_NAME allows to an unknown export
        const reply = Buffer.alloc(10 + (this.#noZeroes ? 0 : EXPORT_NAME_ZERO_PAD_BYTES));
        writeUInt64(reply, exp.device.size, 0);
        reply.writeUInt16BE(this.#transmissionFlags(exp), 8);
        this.#socket.write(reply);
        this.#enter(exp, data.toString('utf8'));
        return true;
      }
      case NBD_OPT_ABORT:
        this.#optionReply(option, NBD_REP_ACK);
        return true;
      case NBD_OPT_LIST:
        if (data.length !== 0) return this.#invalid(option, 'NBD_OPT_LIST takes no data');
        for (const exp of this.#host.listExports()) {
          const name = Buffer.from(exp.name, 'utf8');
          this.#optionReply(option, NBD_REP_SERVER, Buffer.concat([u32(name.length), name, Buffer.from(exp.description, 'utf8')]));
        }
        this.#optionReply(option, NBD_REP_ACK);
        return false;
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.#invalid(option, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.#structured = true;
        this.#optionReply(option, NBD_REP_ACK);
        return false;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.#infoOrGo(option, data);
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.#metaContextOption(option, data);
      default:
        // Unknown options, and STARTTLS (this server speaks no TLS), as proto.md's NOTLS mode says.
        this.#optionReply(option, NBD_REP_ERR_UNSUP, Buffer.from('unsupported option'));
        return false;
    }
  }

  #infoOrGo(option: number, data: Buffer): boolean {
    if (data.length < 6) return this.#invalid(option, 'option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6 || nameLength > NBD_MAX_STRING_BYTES) return this.#invalid(option, 'export name longer than the option');
    const name = data.subarray(4, 4 + nameLength).toString('utf8');
    const requests = data.readUInt16BE(4 + nameLength);
    if (data.length !== 6 + nameLength + 2 * requests) return this.#invalid(option, 'information request count does not match the option length');
    const exp = this.#host.findExport(name);
    if (!exp) {
      this.#optionReply(option, NBD_REP_ERR_UNKNOWN, Buffer.from(`no export named '${name}'`));
      return false;
    }
    const wanted = new Set<number>();
    for (let i = 0; i < requests; i++) wanted.add(data.readUInt16BE(6 + nameLength + 2 * i));
    const info = Buffer.allocUnsafe(12);
    info.writeUInt16BE(NBD_INFO_EXPORT, 0);
    writeUInt64(info, exp.device.size, 2);
    info.writeUInt16BE(this.#transmissionFlags(exp), 10);
    this.#optionReply(option, NBD_REP_INFO, info);
    if (wanted.has(NBD_INFO_NAME)) this.#optionReply(option, NBD_REP_INFO, Buffer.concat([u16(NBD_INFO_NAME), Buffer.from(exp.name, 'utf8')]));
    if (wanted.has(NBD_INFO_DESCRIPTION) && exp.description) {
      this.#optionReply(option, NBD_REP_INFO, Buffer.concat([u16(NBD_INFO_DESCRIPTION), Buffer.from(exp.description, 'utf8')]));
    }
    // Always sent: a client that did not ask must ignore it, one that asked must obey it.
    const [min, preferred, max] = blockSizesOf(exp.device);
    const sizes = Buffer.allocUnsafe(14);
    sizes.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
    sizes.writeUInt32BE(min, 2);
    sizes.writeUInt32BE(preferred, 6);
    sizes.writeUInt32BE(max, 10);
    this.#optionReply(option, NBD_REP_INFO, sizes);
    this.#optionReply(option, NBD_REP_ACK);
    if (option === NBD_OPT_INFO) return false;
    this.#enter(exp, name);
    return true;
  }

  #metaContextOption(option: number, data: Buffer): boolean {
    if (!this.#structured) return this.#invalid(option, 'negotiate structured replies first');
    const parsed = parseMetaContextRequest(data);
    if (!parsed) return this.#invalid(option, 'malformed metadata context request');
    if (!this.#host.findExport(parsed.exportName)) {
      this.#optionReply(option, NBD_REP_ERR_UNKNOWN, Buffer.from(`no export named '${parsed.exportName}'`));
      return false;
    }
    const listing = option === NBD_OPT_LIST_META_CONTEXT;
    // LIST with no queries lists everything; `base:` (empty leaf) lists the whole namespace.
    const matches = listing
      ? parsed.queries.length === 0 || parsed.queries.some((q) => q === BASE_ALLOCATION || q === 'base:')
      : parsed.queries.includes(BASE_ALLOCATION);
    if (matches) {
      const id = listing ? 0 : ALLOCATION_CONTEXT_ID;
      this.#optionReply(option, NBD_REP_META_CONTEXT, Buffer.concat([u32(id), Buffer.from(BASE_ALLOCATION, 'utf8')]));
    }
    if (!listing) this.#metaContext = { exportName: parsed.exportName, allocation: matches };
    this.#optionReply(option, NBD_REP_ACK);
    return false;
  }

  #invalid(option: number, why: string): false {
    this.#optionReply(option, NBD_REP_ERR_INVALID, Buffer.from(why));
    return false;
  }

  #enter(exp: ServedExport, name: string): void {
    this.#chosen = {
      served: exp,
      structured: this.#structured,
      // Block status needs contexts set for the very export the client then chose.
      allocation: this.#metaContext?.allocation === true && this.#metaContext.exportName === name,
    };
  }

  #transmissionFlags(exp: ServedExport): number {
    // Every client goes through the one device object, so a flush of it covers all of them: multi-conn.
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
    flags |= exp.readOnly ? NBD_FLAG_READ_ONLY : NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    if (this.#structured) flags |= NBD_FLAG_SEND_DF; // a READ is always answered in one data chunk
    return flags;
  }

  #optionReply(option: number, type: number, data?: Buffer): void {
    const header = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES);
    header.writeBigUInt64BE(NBD_REP_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(data?.length ?? 0, 16);
    this.#socket.write(data?.length ? Buffer.concat([header, data]) : header);
  }
}

/** proto.md's default constraints, bounded by what the device says it takes. */
export function blockSizesOf(device: BlockDevice): [number, number, number] {
  const min = Math.max(1, device.blockSize);
  const preferred = Math.max(4096, min);
  const max = Math.min(device.maxRequest, NBD_MAX_SAFE_PAYLOAD);
  return [min, preferred, max - (max % min)];
}

/** An export name and queries, as LIST/SET_META_CONTEXT carry them; undefined if malformed. */
function parseMetaContextRequest(data: Buffer): { exportName: string; queries: string[] } | undefined {
  let at = 0;
  const string = (): string | undefined => {
    if (at + 4 > data.length) return undefined;
    const n = data.readUInt32BE(at);
    if (n > NBD_MAX_STRING_BYTES || at + 4 + n > data.length) return undefined;
    const s = data.subarray(at + 4, at + 4 + n).toString('utf8');
    at += 4 + n;
    return s;
  };
  const exportName = string();
  if (exportName === undefined || at + 4 > data.length) return undefined;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const q = string();
    if (q === undefined) return undefined;
    queries.push(q);
  }
  return at === data.length ? { exportName, queries } : undefined;
}

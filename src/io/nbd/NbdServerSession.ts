import type { Socket } from 'node:net';
import { errnoOf } from '../../errors.js';
import { allocSkewedBuffer } from '../../util/skewedBuffer.js';
import { BufferPool } from '../../workers/BufferPool.js';
import type { BlockDevice } from '../BlockDevice.js';
import {
  BASE_ALLOCATION,
  EXPORT_NAME_ZERO_PAD_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ERRNO,
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
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
  commandName,
  nbdErrorValueOf,
  readUInt64,
  u16,
  u32,
  writeUInt64,
} from './protocol.js';
import { SocketReader } from './SocketReader.js';

/** Option data longer than this is not a real client (names and queries are at most 4 KiB each): hang up. */
const MAX_OPTION_DATA_BYTES = 64 * 1024;
/** Options one client may send before it has to pick an export. */
const MAX_OPTIONS = 256;
/** Queued reply bytes past which the session stops reading new requests until the client reads. */
const REPLY_BACKLOG_BYTES = 16 << 20;
/** Extents in one block status reply at most. */
const MAX_STATUS_EXTENTS = 4096;
/** Context id our `base:allocation` gets in SET_META_CONTEXT replies (LIST replies use 0, as proto.md asks). */
const ALLOCATION_CONTEXT_ID = 1;

/** An export as a session sees it: a device, its name, and whether clients may write. */
export interface ServedExport {
  readonly name: string;
  readonly description: string;
  readonly device: BlockDevice;
  readonly readOnly: boolean;
}

/** What a session needs from its server. */
export interface SessionHost {
  /** The export a client's name selects (the empty name: the default export), if any. */
  findExport(name: string): ServedExport | undefined;
  listExports(): readonly ServedExport[];
  /** True once the server is shutting down: options get NBD_REP_ERR_SHUTDOWN. */
  readonly shuttingDown: boolean;
  readonly maxRequestsInFlight: number;
  readonly handshakeTimeoutMs: number;
  /** Told about a client that broke the protocol or whose connection failed (for logs). */
  onClientError(err: Error): void;
}

/** A request the session refuses, with the NBD error it answers. */
class RequestError extends Error {
  constructor(
    readonly errno: keyof typeof NBD_ERRNO,
    message: string,
  ) {
    super(message);
  }
}

/** The client broke the protocol in a way that leaves nothing to answer: hang up. */
class HangUp extends Error {}

/**
 * One client connection to an {@link NbdServer}: the server's side of the fixed-newstyle
 * handshake, then the transmission phase. Requests are served concurrently (up to the server's
 * per-client limit) and answered as they finish, in any order. Every request is checked before it
 * touches the device: out of bounds, over the maximum size, misaligned, or writing a read-only
 * export gets an error reply (EINVAL, EPERM), never an exception. Input that cannot be parsed
 * further (bad magic, an oversized payload, a truncated request) closes this connection only.
 */
export class NbdServerSession {
  readonly #socket: Socket;
  readonly #reader: SocketReader;
  readonly #host: SessionHost;
  #structured = false;
  #noZeroes = false;
  /** The export and contexts the last NBD_OPT_SET_META_CONTEXT selected. */
  #metaContext: { exportName: string; allocation: boolean } | undefined;
  #export: ServedExport | undefined;
  #allocationSelected = false;
  #inFlight = 0;
  /** READ buffers, reused once the socket has sent them (a fresh one per request costs page faults). */
  readonly #readBuffers = new BufferPool(async (bytes) => allocSkewedBuffer(bytes));
  /** Waiting for room or for the requests in progress to finish; woken on every change. */
  #waiters: (() => void)[] = [];
  #stopping = false;
  /** True while waiting for the first byte of a request: a client leaving here just left. */
  #betweenRequests = false;
  readonly done: Promise<void>;

  constructor(socket: Socket, host: SessionHost) {
    this.#socket = socket;
    this.#host = host;
    this.#reader = new SocketReader(socket);
    socket.on('error', () => {}); // surfaced through the reader
    socket.on('drain', () => this.#notify());
    this.done = this.#run();
  }

  /** The export this client chose, once it has (undefined during the handshake). */
  get exportName(): string | undefined {
    return this.#export?.name;
  }

  /**
   * Stops taking requests: a client still in the handshake is dropped; one in transmission gets
   * the answers to the requests in progress, then the connection closes (forcibly after `graceMs`).
   */
  stop(graceMs = 2000): void {
    this.#stopping = true;
    if (!this.#export) this.#socket.destroy();
    this.#notify();
    void this.#drained().then(() => {
      this.#socket.end();
      setTimeout(() => this.#socket.destroy(), graceMs).unref();
    });
  }

  async #run(): Promise<void> {
    try {
      const timer = setTimeout(() => this.#socket.destroy(), this.#host.handshakeTimeoutMs);
      try {
        await this.#handshake();
      } finally {
        clearTimeout(timer);
      }
      if (this.#export) await this.#transmission();
    } catch (err) {
      const quietly = this.#stopping || (err instanceof HangUp && err.message === '') || (this.#betweenRequests && this.#reader.buffered === 0);
      if (!quietly) this.#host.onClientError(err as Error);
    } finally {
      await this.#drained();
      this.#socket.end();
      this.#socket.destroySoon();
    }
  }

  // ── Handshake ─────────────────────────────────────────────────────────────────────────────

  async #handshake(): Promise<void> {
    const greeting = Buffer.allocUnsafe(18);
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
      const header = await this.#reader.read(OPTION_HEADER_BYTES);
      if (header.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw new HangUp('bad option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > MAX_OPTION_DATA_BYTES) throw new HangUp(`${length}-byte option data`);
      const data = Buffer.allocUnsafe(length);
      await this.#reader.readInto(data);
      if (await this.#option(option, data)) return;
    }
    throw new HangUp(`more than ${MAX_OPTIONS} options`);
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
        if (!exp) throw new HangUp(''); // the only answer NBD_OPT_EXPORT_NAME allows to an unknown export
        const reply = Buffer.alloc(10 + (this.#noZeroes ? 0 : EXPORT_NAME_ZERO_PAD_BYTES));
        writeUInt64(reply, exp.device.size, 0);
        reply.writeUInt16BE(this.#transmissionFlags(exp), 8);
        this.#socket.write(reply);
        this.#enter(exp, data.toString('utf8'));
        return true;
      }
      case NBD_OPT_ABORT:
        this.#optionReply(option, NBD_REP_ACK);
        throw new HangUp('');
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
    this.#export = exp;
    // Block status needs contexts set for the very export the client then chose.
    this.#allocationSelected = this.#metaContext?.allocation === true && this.#metaContext.exportName === name;
  }

  #transmissionFlags(exp: ServedExport): number {
    // Every client goes through the one device object, so a flush of it covers all of them: multi-conn.
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
    flags |= exp.readOnly ? NBD_FLAG_READ_ONLY : NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    if (this.#structured) flags |= NBD_FLAG_SEND_DF; // a READ is always answered in one data chunk
    return flags;
  }

  #optionReply(option: number, type: number, data: Buffer = EMPTY): void {
    const header = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES);
    header.writeBigUInt64BE(NBD_REP_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(data.length, 16);
    this.#socket.write(data.length > 0 ? Buffer.concat([header, data]) : header);
  }

  // ── Transmission ──────────────────────────────────────────────────────────────────────────

  async #transmission(): Promise<void> {
    const exp = this.#export!;
    for (;;) {
      await this.#roomForRequest();
      if (this.#stopping) return;
      this.#betweenRequests = true;
      const header = await this.#reader.read(REQUEST_HEADER_BYTES);
      this.#betweenRequests = false;
      if (header.readUInt32BE(0) !== NBD_REQUEST_MAGIC) throw new HangUp('bad request magic');
      const flags = header.readUInt16BE(4);
      const command = header.readUInt16BE(6);
      const cookie = Buffer.from(header.subarray(8, 16)); // the header view is reused by the next read
      const offset = readUInt64(header, 16);
      const length = header.readUInt32BE(24);
      if (command === NBD_CMD_DISC) return;
      let payload: Buffer | undefined;
      if (command === NBD_CMD_WRITE) {
        if (length > NBD_MAX_SAFE_PAYLOAD) {
          // Refuse, then hang up: reading (or skipping) gigabytes we will not write is the client's attack, not our job.
          this.#reply(cookie, command, NBD_ERRNO.EINVAL, `write of ${length} bytes exceeds the maximum`);
          throw new HangUp(`${length}-byte write payload`);
        }
        payload = Buffer.allocUnsafe(length);
        await this.#reader.readInto(payload);
      }
      this.#inFlight++;
      void this.#serve(exp, flags, command, cookie, offset, length, payload).finally(() => {
        this.#inFlight--;
        this.#notify();
      });
    }
  }

  async #serve(exp: ServedExport, flags: number, command: number, cookie: Buffer, offset: number, length: number, payload: Buffer | undefined): Promise<void> {
    const device = exp.device;
    try {
      switch (command) {
        case NBD_CMD_READ: {
          this.#checkRange(exp, offset, length, true);
          const data = await this.#readBuffers.take(length);
          try {
            if (length > 0) await device.read(data, offset);
          } catch (err) {
            this.#readBuffers.give(data);
            throw err;
          }
          // The buffer goes back to the pool once the socket has handed it to the kernel.
          this.#readReply(cookie, offset, data, () => this.#readBuffers.give(data));
          return;
        }
        case NBD_CMD_WRITE:
          this.#checkWritable(exp);
          this.#checkRange(exp, offset, length, true);
          await device.write(payload!, offset);
          break;
        case NBD_CMD_WRITE_ZEROES:
          this.#checkWritable(exp);
          if (flags & NBD_CMD_FLAG_FAST_ZERO) throw new RequestError('EINVAL', 'fast zero was not offered');
          this.#checkRange(exp, offset, length, true);
          await device.writeZeroes(offset, length);
          break;
        case NBD_CMD_TRIM:
          this.#checkWritable(exp);
          this.#checkRange(exp, offset, length, false);
          await device.discard(offset, length);
          break;
        case NBD_CMD_FLUSH:
          await device.flush();
          break;
        case NBD_CMD_BLOCK_STATUS:
          if (!this.#structured || !this.#allocationSelected) throw new RequestError('EINVAL', 'no metadata context was selected');
          this.#checkRange(exp, offset, length, false);
          if (length === 0) throw new RequestError('EINVAL', 'zero-length block status');
          this.#blockStatusReply(cookie, await allocationOf(device, offset, length, (flags & NBD_CMD_FLAG_REQ_ONE) !== 0));
          return;
        default:
          throw new RequestError('EINVAL', `unknown ${commandName(command)}`);
      }
      if (flags & NBD_CMD_FLAG_FUA) await device.flush();
      this.#reply(cookie, command, 0);
    } catch (err) {
      const [value, message] =
        err instanceof RequestError ? [NBD_ERRNO[err.errno], err.message] : [nbdErrorValueOf(errnoOf(err)), (err as Error).message ?? String(err)];
      this.#reply(cookie, command, value, message);
    }
  }

  #checkRange(exp: ServedExport, offset: number, length: number, sizeLimited: boolean): void {
    const { size } = exp.device;
    const [min, , max] = blockSizesOf(exp.device);
    if (offset + length > size) throw new RequestError('EINVAL', `request at ${offset} (+${length}) is past the end (${size} bytes)`);
    if (sizeLimited && length > max) throw new RequestError('EINVAL', `request of ${length} bytes exceeds the maximum of ${max}`);
    if (min > 1 && (offset % min !== 0 || length % min !== 0)) throw new RequestError('EINVAL', `request not aligned to ${min} bytes`);
  }

  #checkWritable(exp: ServedExport): void {
    if (exp.readOnly) throw new RequestError('EPERM', 'the export is read-only');
  }

  /** A success or error reply without data. Structured errors carry a message for the client's user. */
  #reply(cookie: Buffer, command: number, error: number, message = ''): void {
    if (this.#structured && (error !== 0 || command === NBD_CMD_READ || command === NBD_CMD_BLOCK_STATUS)) {
      if (error === 0) return this.#chunk(cookie, NBD_REPLY_TYPE_NONE, EMPTY);
      const text = Buffer.from(message.slice(0, 1024), 'utf8');
      const body = Buffer.allocUnsafe(6 + text.length);
      body.writeUInt32BE(error, 0);
      body.writeUInt16BE(text.length, 4);
      text.copy(body, 6);
      return this.#chunk(cookie, NBD_REPLY_TYPE_ERROR, body);
    }
    const header = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
    header.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
    header.writeUInt32BE(error, 4);
    cookie.copy(header, 8);
    this.#send(header);
  }

  /** The data of a READ; `sent` runs once the socket no longer needs `data` (or never will). */
  #readReply(cookie: Buffer, offset: number, data: Buffer, sent: () => void): void {
    if (!this.#structured) {
      const header = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
      header.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
      header.writeUInt32BE(0, 4);
      cookie.copy(header, 8);
      return this.#send(header, data, sent);
    }
    if (data.length === 0) {
      sent();
      return this.#chunk(cookie, NBD_REPLY_TYPE_NONE, EMPTY);
    }
    const header = this.#chunkHeader(cookie, NBD_REPLY_TYPE_OFFSET_DATA, 8 + data.length, 8);
    writeUInt64(header, offset, STRUCTURED_REPLY_HEADER_BYTES);
    this.#send(header, data, sent);
  }

  #blockStatusReply(cookie: Buffer, extents: readonly StatusExtent[]): void {
    const body = Buffer.allocUnsafe(4 + 8 * extents.length);
    body.writeUInt32BE(ALLOCATION_CONTEXT_ID, 0);
    extents.forEach((e, i) => {
      body.writeUInt32BE(e.length, 4 + 8 * i);
      body.writeUInt32BE(e.flags, 8 + 8 * i);
    });
    this.#chunk(cookie, NBD_REPLY_TYPE_BLOCK_STATUS, body);
  }

  /** A final structured chunk with its body. */
  #chunk(cookie: Buffer, type: number, body: Buffer): void {
    this.#send(this.#chunkHeader(cookie, type, body.length, 0), body.length > 0 ? body : undefined);
  }

  #chunkHeader(cookie: Buffer, type: number, length: number, extra: number): Buffer {
    const header = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + extra);
    header.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
    header.writeUInt16BE(NBD_REPLY_FLAG_DONE, 4);
    header.writeUInt16BE(type, 6);
    cookie.copy(header, 8);
    header.writeUInt32BE(length, 16);
    return header;
  }

  /** Header and body in one writev, without copying the body; `sent` runs when the body's memory is free again. */
  #send(header: Buffer, body?: Buffer, sent?: () => void): void {
    if (this.#socket.destroyed) {
      sent?.();
      return; // the client left; its answers have nowhere to go
    }
    if (!body) {
      this.#socket.write(header);
      return;
    }
    this.#socket.cork();
    this.#socket.write(header);
    // On an error the callback also runs (with the error): the memory is free either way.
    this.#socket.write(body, sent && (() => sent()));
    this.#socket.uncork();
  }

  /** Waits while too many requests are in progress or too many reply bytes are queued. */
  async #roomForRequest(): Promise<void> {
    while (
      !this.#stopping &&
      (this.#inFlight >= this.#host.maxRequestsInFlight || this.#socket.writableLength > REPLY_BACKLOG_BYTES) &&
      !this.#socket.destroyed
    ) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  async #drained(): Promise<void> {
    while (this.#inFlight > 0) await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  #notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}

/** One extent of a block status reply, with NBD_STATE_* flags. */
interface StatusExtent {
  readonly length: number;
  readonly flags: number;
}

/**
 * `base:allocation` for a range: the device's own answer where it has one, clipped to the
 * request; otherwise the whole range as allocated data, which is always true enough.
 */
async function allocationOf(device: BlockDevice, offset: number, length: number, one: boolean): Promise<StatusExtent[]> {
  const whole = [{ length, flags: 0 }];
  if (!device.blockStatus) return whole;
  const out: StatusExtent[] = [];
  let covered = 0;
  for (const e of await device.blockStatus(offset, length)) {
    if (covered >= length || out.length >= (one ? 1 : MAX_STATUS_EXTENTS)) break;
    const n = Math.min(e.length, length - covered);
    if (n <= 0) break;
    out.push({ length: n, flags: (e.hole ? NBD_STATE_HOLE : 0) | (e.zero ? NBD_STATE_ZERO : 0) });
    covered += n;
  }
  return out.length > 0 ? out : whole;
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

const EMPTY = Buffer.alloc(0);

import type { Socket } from 'node:net';
import { ErrorCode, IoError, NbdError, type IoOperation } from '../../errors.js';
import type { AllocationExtent } from '../BlockDevice.js';
import { connectAndNegotiate, type NbdConnectOptions } from './NbdClientHandshake.js';
import type { NbdExportInfo } from './NbdExportInfo.js';
import { formatNbdUri, type NbdAddress } from './NbdUri.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_FLAG_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
  commandName,
  errnoNameOf,
  peerText,
  readUInt64,
  writeUInt64,
} from './protocol.js';
import type { SocketReader } from './SocketReader.js';

/** Error chunks and block status replies longer than this are a broken server. */
const MAX_METADATA_CHUNK_BYTES = 16 << 20;
/** How long `close` waits for the server to hang up after NBD_CMD_DISC. */
const DISCONNECT_GRACE_MS = 2000;

/** A request waiting for its reply, keyed by cookie. */
interface PendingRequest {
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** READ: where the data goes. */
  readonly buf: Uint8Array | undefined;
  /** READ: bytes of data (or holes) received so far. */
  covered: number;
  /** BLOCK_STATUS: the extents received. */
  extents: AllocationExtent[] | undefined;
  /** The first error chunk received. */
  error: { errno: string; message: string } | undefined;
  readonly resolve: (extents: AllocationExtent[] | undefined) => void;
  readonly reject: (err: Error) => void;
}

function operationOf(command: number): IoOperation {
  switch (command) {
    case NBD_CMD_WRITE:
    case NBD_CMD_WRITE_ZEROES:
      return 'write';
    case NBD_CMD_TRIM:
      return 'discard';
    case NBD_CMD_FLUSH:
      return 'flush';
    default:
      return 'read';
  }
}

/**
 * One NBD connection in the transmission phase. Requests are pipelined: any number in flight,
 * each with its own cookie, replies matched by cookie in whatever order the server sends them
 * (simple replies, or structured reply chunks interleaved across requests).
 *
 * Every request rejects with an {@link IoError}: a server error reply keeps its errno (EIO,
 * ENOSPC, EPERM, EINVAL...); a lost connection fails every request in flight at once with
 * ECONNRESET, and a server that breaks the protocol with EPROTO (the connection is dropped,
 * since nothing after a framing error can be trusted). The `cause` of those two is an
 * {@link NbdError}. A lost connection is not reopened here: {@link NbdDevice} does that.
 *
 * Callers keep requests within the export and its block size constraints (`info`); the
 * connection sends what it is given.
 */
export class NbdConnection {
  readonly info: NbdExportInfo;
  /** The URI, for messages. */
  readonly description: string;
  readonly #socket: Socket;
  readonly #reader: SocketReader;
  readonly #pending = new Map<number, PendingRequest>();
  #nextCookie = 1;
  #corked = false;
  #lost: NbdError | undefined;
  #disconnecting = false;
  #onLost: ((err: NbdError) => void) | undefined;
  #idle: (() => void) | undefined;

  private constructor(address: NbdAddress, socket: Socket, reader: SocketReader, info: NbdExportInfo) {
    this.description = formatNbdUri(address);
    this.#socket = socket;
    this.#reader = reader;
    this.info = info;
    socket.on('error', () => {}); // surfaced through the reader, which ends the receive loop
    void this.#receive();
  }

  /** Connects and negotiates (see {@link connectAndNegotiate} for the errors). */
  static async open(address: NbdAddress, options: NbdConnectOptions = {}): Promise<NbdConnection> {
    const { socket, reader, info } = await connectAndNegotiate(address, options);
    return new NbdConnection(address, socket, reader, info);
  }

  /** Why the connection is gone, once it is (undefined while it is up). */
  get lost(): NbdError | undefined {
    return this.#lost;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Called once when the connection is lost (not after `close`). */
  onLost(callback: (err: NbdError) => void): void {
    this.#onLost = callback;
  }

  /** Reads `buf.length` bytes at `offset` into `buf`. */
  async read(buf: Uint8Array, offset: number, flags = 0): Promise<void> {
    await this.#request(NBD_CMD_READ, flags, offset, buf.length, undefined, buf);
  }

  /** Writes `data` at `offset`. The data is sent from `data` itself: do not change it until this resolves. */
  async write(data: Uint8Array, offset: number, flags = 0): Promise<void> {
    await this.#request(NBD_CMD_WRITE, flags, offset, data.length, data, undefined);
  }

  async writeZeroes(offset: number, length: number, flags = 0): Promise<void> {
    await this.#request(NBD_CMD_WRITE_ZEROES, flags, offset, length, undefined, undefined);
  }

  async trim(offset: number, length: number, flags = 0): Promise<void> {
    await this.#request(NBD_CMD_TRIM, flags, offset, length, undefined, undefined);
  }

  /** Every write the server has answered is on stable storage when this resolves. */
  async flush(): Promise<void> {
    await this.#request(NBD_CMD_FLUSH, 0, 0, 0, undefined, undefined);
  }

  /**
   * `base:allocation` status from `offset`: consecutive extents, at least one, the first
   * starting at `offset` (the server may describe less or, in the last extent, more than asked).
   * Needs a negotiated allocation context.
   */
  async blockStatus(offset: number, length: number, flags = 0): Promise<AllocationExtent[]> {
    if (this.info.allocationContextId === undefined) {
      throw new IoError('ENOTSUP', 'read', `${this.description} offers no base:allocation metadata context`);
    }
    return (await this.#request(NBD_CMD_BLOCK_STATUS, flags, offset, length, undefined, undefined))!;
  }

  /**
   * Leaves cleanly: waits for the requests in flight, sends NBD_CMD_DISC, and closes. Safe to
   * call more than once, and after the connection was lost.
   */
  async close(): Promise<void> {
    if (this.#disconnecting) return;
    this.#disconnecting = true;
    if (!this.#lost) {
      if (this.#pending.size > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
      if (!this.#lost) {
        this.#sendHeader(NBD_CMD_DISC, 0, 0, 0, 0);
        this.#socket.end();
      }
    }
    await new Promise<void>((resolve) => {
      if (this.#socket.closed) return resolve();
      const timer = setTimeout(() => this.#socket.destroy(), DISCONNECT_GRACE_MS);
      this.#socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Drops the connection at once, failing the requests in flight. */
  destroy(reason = 'closed by the client'): void {
    this.#fail(new NbdError(ErrorCode.NBD_CONNECTION, `NBD connection to ${this.description} ${reason}`));
    this.#socket.destroy();
  }

  #request(
    command: number,
    flags: number,
    offset: number,
    length: number,
    payload: Uint8Array | undefined,
    buf: Uint8Array | undefined,
  ): Promise<AllocationExtent[] | undefined> {
    if (this.#lost) return Promise.reject(this.#ioErrorFor(command, offset, length, this.#lost));
    if (this.#disconnecting) {
      return Promise.reject(this.#ioErrorFor(command, offset, length, new NbdError(ErrorCode.NBD_CONNECTION, `NBD connection to ${this.description} is closing`)));
    }
    const cookie = this.#takeCookie();
    return new Promise((resolve, reject) => {
      this.#pending.set(cookie, { command, offset, length, buf, covered: 0, extents: undefined, error: undefined, resolve, reject });
      this.#sendHeader(command, flags, cookie, offset, length);
      if (payload) this.#socket.write(payload);
    });
  }

  #takeCookie(): number {
    // Cookies are 64-bit on the wire; 32 bits of counter, skipping any still in flight, are plenty.
    let cookie = this.#nextCookie;
    while (this.#pending.has(cookie)) cookie = (cookie % 0xffff_ffff) + 1;
    this.#nextCookie = (cookie % 0xffff_ffff) + 1;
    return cookie;
  }

  /**
   * Queues a request header. Everything sent in one tick goes out in one writev: the socket is
   * corked on the first write and uncorked on the next tick, so a header and its payload (and a
   * whole batch of requests) cost one system call without copying payloads together.
   */
  #sendHeader(command: number, flags: number, cookie: number, offset: number, length: number): void {
    const header = Buffer.allocUnsafe(REQUEST_HEADER_BYTES); // a slice of Node's shared pool: no allocation per request
    header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(command, 6);
    header.writeUInt32BE(0, 8);
    header.writeUInt32BE(cookie, 12);
    writeUInt64(header, offset, 16);
    header.writeUInt32BE(length, 24);
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        this.#socket.uncork();
      });
    }
    this.#socket.write(header);
  }

  /** The receive loop: one reply header at a time, each routed to its request by cookie. */
  async #receive(): Promise<void> {
    try {
      for (;;) {
        const head = await this.#reader.read(SIMPLE_REPLY_HEADER_BYTES);
        const magic = head.readUInt32BE(0);
        if (magic === NBD_SIMPLE_REPLY_MAGIC) {
          await this.#simpleReply(head.readUInt32BE(4), this.#cookieOf(head, 8));
        } else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
          if (!this.info.structuredReplies) throw this.#protocolError('structured reply without negotiating it');
          const flags = head.readUInt16BE(4);
          const type = head.readUInt16BE(6);
          const cookie = this.#cookieOf(head, 8);
          const length = (await this.#reader.read(STRUCTURED_REPLY_HEADER_BYTES - SIMPLE_REPLY_HEADER_BYTES)).readUInt32BE(0);
          await this.#structuredChunk(flags, type, cookie, length);
        } else {
          throw this.#protocolError(`bad reply magic 0x${magic.toString(16)}`);
        }
      }
    } catch (err) {
      if (this.#disconnecting && this.#pending.size === 0) {
        this.#lost ??= new NbdError(ErrorCode.NBD_CONNECTION, `NBD connection to ${this.description} closed`);
        return;
      }
      const reason =
        err instanceof NbdError
          ? err
          : new NbdError(ErrorCode.NBD_CONNECTION, `NBD connection to ${this.description} lost: ${(err as Error).message}`, { cause: err });
      this.#fail(reason);
      this.#socket.destroy();
    }
  }

  #cookieOf(head: Buffer, at: number): number {
    if (head.readUInt32BE(at) !== 0) throw this.#protocolError('reply to a cookie never sent');
    return head.readUInt32BE(at + 4);
  }

  #requestFor(cookie: number): PendingRequest {
    const req = this.#pending.get(cookie);
    if (!req) throw this.#protocolError(`reply to cookie ${cookie}, which is not in flight`);
    return req;
  }

  async #simpleReply(error: number, cookie: number): Promise<void> {
    const req = this.#requestFor(cookie);
    if (error !== 0) {
      req.error = { errno: errnoNameOf(error), message: '' };
    } else if (req.command === NBD_CMD_READ) {
      // A simple reply to a READ carries the data; with structured replies it must not be used at all.
      if (this.info.structuredReplies) throw this.#protocolError('simple reply to a READ after structured replies were negotiated');
      await this.#reader.readInto(req.buf!);
      req.covered = req.length;
    } else if (req.command === NBD_CMD_BLOCK_STATUS) {
      throw this.#protocolError('simple reply to BLOCK_STATUS');
    }
    this.#complete(cookie, req);
  }

  async #structuredChunk(flags: number, type: number, cookie: number, length: number): Promise<void> {
    const req = this.#requestFor(cookie);
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0) throw this.#protocolError('NBD_REPLY_TYPE_NONE with a payload');
        break;
      case NBD_REPLY_TYPE_OFFSET_DATA: {
        if (req.command !== NBD_CMD_READ || length < 9) throw this.#protocolError('misplaced NBD_REPLY_TYPE_OFFSET_DATA');
        const at = readUInt64(await this.#reader.read(8), 0);
        const dataLength = length - 8;
        const into = this.#readRange(req, at, dataLength);
        await this.#reader.readInto(into);
        req.covered += dataLength;
        break;
      }
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (req.command !== NBD_CMD_READ || length !== 12) throw this.#protocolError('misplaced NBD_REPLY_TYPE_OFFSET_HOLE');
        const chunk = await this.#reader.read(12);
        const at = readUInt64(chunk, 0);
        const holeLength = chunk.readUInt32BE(8);
        this.#readRange(req, at, holeLength).fill(0);
        req.covered += holeLength;
        break;
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        if (req.command !== NBD_CMD_BLOCK_STATUS || length < 12 || (length - 4) % 8 !== 0 || length > MAX_METADATA_CHUNK_BYTES) {
          throw this.#protocolError('malformed NBD_REPLY_TYPE_BLOCK_STATUS');
        }
        this.#blockStatusChunk(req, await this.#reader.read(length));
        break;
      default:
        if ((type & NBD_REPLY_TYPE_FLAG_ERROR) === 0) throw this.#protocolError(`unknown reply chunk type ${type}`);
        if (length < 6 || length > MAX_METADATA_CHUNK_BYTES) throw this.#protocolError('malformed error chunk');
        this.#errorChunk(req, type, await this.#reader.read(length));
    }
    if (flags & NBD_REPLY_FLAG_DONE) this.#complete(cookie, req);
  }

  /** The part of a READ's buffer a data or hole chunk covers; a chunk outside the request is a protocol error. */
  #readRange(req: PendingRequest, at: number, length: number): Uint8Array {
    const start = at - req.offset;
    if (length === 0 || start < 0 || start + length > req.length) throw this.#protocolError('read reply chunk outside the request');
    return req.buf!.subarray(start, start + length);
  }

  #blockStatusChunk(req: PendingRequest, chunk: Buffer): void {
    if (chunk.readUInt32BE(0) !== this.info.allocationContextId) return; // another context's view: not ours to read
    const extents: AllocationExtent[] = [];
    for (let at = 4; at < chunk.length; at += 8) {
      const length = chunk.readUInt32BE(at);
      const state = chunk.readUInt32BE(at + 4);
      if (length === 0) throw this.#protocolError('zero-length block status extent');
      extents.push({ length, hole: (state & NBD_STATE_HOLE) !== 0, zero: (state & NBD_STATE_ZERO) !== 0 });
    }
    req.extents = extents;
  }

  #errorChunk(req: PendingRequest, type: number, chunk: Buffer): void {
    const value = chunk.readUInt32BE(0);
    const messageLength = chunk.readUInt16BE(4);
    const extra = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
    if (6 + messageLength + extra > chunk.length) throw this.#protocolError('error chunk message longer than the chunk');
    const message = peerText(chunk.subarray(6, 6 + messageLength));
    const where = extra ? ` at offset ${readUInt64(chunk, 6 + messageLength)}` : '';
    req.error ??= { errno: value === 0 ? 'EIO' : errnoNameOf(value), message: message + where };
  }

  #complete(cookie: number, req: PendingRequest): void {
    this.#pending.delete(cookie);
    if (req.error) {
      const said = req.error.message ? ` (server: ${req.error.message})` : '';
      req.reject(
        new IoError(
          req.error.errno,
          operationOf(req.command),
          `${commandName(req.command)} failed on ${this.description}${this.#where(req.command, req.offset, req.length)}: ${req.error.errno}${said}`,
          { offset: req.offset, length: req.length },
        ),
      );
    } else if (req.command === NBD_CMD_READ && req.covered !== req.length) {
      req.reject(
        new IoError('EIO', 'read', `${this.description} answered a ${req.length}-byte READ at offset ${req.offset} with ${req.covered} bytes`, {
          offset: req.offset,
          length: req.length,
        }),
      );
    } else if (req.command === NBD_CMD_BLOCK_STATUS && !req.extents) {
      req.reject(new IoError('EIO', 'read', `${this.description} answered BLOCK_STATUS without base:allocation extents`, { offset: req.offset }));
    } else {
      req.resolve(req.extents);
    }
    if (this.#pending.size === 0) this.#idle?.();
  }

  #where(command: number, offset: number, length: number): string {
    return command === NBD_CMD_FLUSH ? '' : ` at offset ${offset} (+${length})`;
  }

  #protocolError(why: string): NbdError {
    return new NbdError(ErrorCode.NBD_PROTOCOL, `NBD server ${this.description} broke the protocol: ${why}`);
  }

  /** The I/O error a request gets when the connection under it fails. */
  #ioErrorFor(command: number, offset: number, length: number, reason: NbdError): IoError {
    const errno = reason.code === ErrorCode.NBD_PROTOCOL ? 'EPROTO' : 'ECONNRESET';
    return new IoError(errno, operationOf(command), `${commandName(command)}${this.#where(command, offset, length)}: ${reason.message}`, {
      offset: command === NBD_CMD_FLUSH ? undefined : offset,
      length: command === NBD_CMD_FLUSH ? undefined : length,
      cause: reason,
    });
  }

  /** Marks the connection lost and fails every request in flight at once. */
  #fail(reason: NbdError): void {
    if (this.#lost) return;
    this.#lost = reason;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const req of pending) req.reject(this.#ioErrorFor(req.command, req.offset, req.length, reason));
    this.#idle?.();
    if (!this.#disconnecting) this.#onLost?.(reason);
  }
}

import type { Socket } from 'node:net';
import { BlockmirrorError, ErrorCode, NbdError, errnoOf } from '../../errors.js';
import type { BlockDevice } from '../BlockDevice.js';
import { ALLOCATION_CONTEXT_ID, blockSizesOf, HangUp, NbdServerHandshake, type HandshakeHost, type ServedExport } from './NbdServerHandshake.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ERRNO,
  NBD_MAX_SAFE_PAYLOAD,
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
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
  commandName,
  nbdErrorValueOf,
  readUInt64,
  writeUInt64,
} from './protocol.js';
import { ReadBufferPool } from './ReadBufferPool.js';
import { SocketReader } from './SocketReader.js';

/** Extents in one block status reply at most. */
const MAX_STATUS_EXTENTS = 4096;
/**
 * Read-ahead during the handshake: option data is streamed into its own buffer, so nothing
 * needs more than a header here, and a flood of connections in the handshake holds little.
 */
const HANDSHAKE_READ_AHEAD_BYTES = 64 * 1024;

/** What a session needs from its server: the handshake's needs, and its own limits. */
export interface SessionHost extends HandshakeHost {
  readonly maxRequestsInFlight: number;
  /**
   * Bytes of request data the server may hold for this client at once: write payloads received
   * and not yet written, read data not yet handed to the socket, and replies the client has not
   * read. Past it, no further request is read until some are done (one request is always let in).
   */
  readonly maxBufferBytes: number;
  /** Bytes received ahead of the session in transmission before the socket is paused. */
  readonly readAheadBytes: number;
  /** Told about a client that broke the protocol or whose connection failed (for logs). */
  onClientError(err: Error): void;
  /** Told once the client has chosen an export (it no longer counts as in the handshake). */
  handshakeDone(): void;
}

/** Command flags each command accepts (besides FUA, which every one does); DF only with structured replies. */
const COMMAND_FLAGS: Readonly<Record<number, number>> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: 0,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_NO_HOLE,
  [NBD_CMD_TRIM]: 0,
  [NBD_CMD_FLUSH]: 0,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_REQ_ONE,
};

/** A request the session refuses, with the NBD error it answers. */
class RequestError extends Error {
  constructor(
    readonly errno: keyof typeof NBD_ERRNO,
    message: string,
  ) {
    super(message);
  }
}

/**
 * One client connection to an {@link NbdServer}: the server's side of the fixed-newstyle
 * handshake ({@link NbdServerHandshake}), then the transmission phase. Requests are served
 * concurrently (up to the server's per-client limit) and answered as they finish, in any order.
 * Every request is checked before it touches the device, and before its payload is buffered:
 * out of bounds, over the maximum size, misaligned, with flags it does not take, or writing a
 * read-only export gets an error reply (EINVAL, EPERM), never an exception; a refused write's
 * payload is skipped without being held. Input that cannot be parsed further (bad magic, a
 * payload over 32 MiB, a truncated request) closes this connection only.
 *
 * What the client can make the server hold is bounded: the requests in progress, the bytes of
 * their data and of replies it has not read ({@link SessionHost.maxBufferBytes}), and what it
 * sends ahead ({@link SessionHost.readAheadBytes}); past those, the socket is simply not read,
 * and the client waits in TCP.
 */
export class NbdServerSession {
  readonly #socket: Socket;
  readonly #reader: SocketReader;
  readonly #host: SessionHost;
  /** The export the client chose, once it has. */
  #export: ServedExport | undefined;
  #structured = false;
  #allocationSelected = false;
  #inFlight = 0;
  /** Bytes of write payloads and read data of the requests in progress. */
  #held = 0;
  /** READ buffers, reused once the socket has sent them; spare ones take at most half the buffer budget. */
  readonly #readBuffers: ReadBufferPool;
  /** Waiting for room or for the requests in progress to finish; woken on every change. */
  #waiters: (() => void)[] = [];
  #stopping = false;
  /** True while waiting for the first byte of a request: a client leaving here just left. */
  #betweenRequests = false;
  readonly done: Promise<void>;

  constructor(socket: Socket, host: SessionHost) {
    this.#socket = socket;
    this.#host = host;
    this.#reader = new SocketReader(socket, { readAheadBytes: HANDSHAKE_READ_AHEAD_BYTES });
    this.#readBuffers = new ReadBufferPool(host.maxBufferBytes / 2);
    socket.on('error', () => {}); // surfaced through the reader
    socket.on('drain', () => this.#notify());
    // A session waiting for room must learn that its client is gone, or it would wait forever.
    socket.on('close', () => this.#notify());
    this.done = this.#run();
  }

  /** Bytes held for this client now: unparsed input, request data in progress, unsent replies. */
  get bufferedBytes(): number {
    return this.#reader.buffered + this.#held + this.#socket.writableLength;
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
      const chosen = await new NbdServerHandshake(this.#socket, this.#reader, this.#host).run();
      if (!chosen) return; // the client left in good order
      this.#host.handshakeDone();
      this.#reader.readAheadBytes = this.#host.readAheadBytes;
      this.#export = chosen.served;
      this.#structured = chosen.structured;
      this.#allocationSelected = chosen.allocation;
      await this.#transmission();
    } catch (err) {
      const quietly = this.#stopping || (this.#betweenRequests && this.#reader.buffered === 0);
      if (!quietly) this.#host.onClientError(this.#typed(err));
    } finally {
      await this.#drained();
      this.#socket.end();
      this.#socket.destroySoon();
    }
  }

  async #transmission(): Promise<void> {
    const exp = this.#export!;
    for (;;) {
      await this.#roomForRequest();
      if (this.#stopping || this.#socket.destroyed) return;
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
      if (command === NBD_CMD_WRITE && length > NBD_MAX_SAFE_PAYLOAD) {
        // Refuse, then hang up: proto.md lets a server treat a payload over 32 MiB as an attack, and reading
        // (or skipping) gigabytes we will not write is not our job.
        this.#reply(cookie, command, NBD_ERRNO.EINVAL, `write of ${length} bytes exceeds the maximum`);
        throw new HangUp(`${length}-byte write payload`);
      }
      const refused = this.#check(exp, flags, command, offset, length);
      if (refused) {
        // The stream stays in step: a refused write's payload is dropped as it arrives, never held.
        if (command === NBD_CMD_WRITE) await this.#reader.skip(length);
        this.#reply(cookie, command, NBD_ERRNO[refused.errno], refused.message);
        continue;
      }
      const bytes = command === NBD_CMD_READ || command === NBD_CMD_WRITE ? length : 0;
      await this.#roomFor(bytes);
      if (this.#stopping || this.#socket.destroyed) return;
      this.#held += bytes;
      let payload: Buffer | undefined;
      if (command === NBD_CMD_WRITE) {
        payload = Buffer.allocUnsafe(length);
        try {
          await this.#reader.readInto(payload);
        } catch (err) {
          this.#held -= bytes;
          throw err;
        }
      }
      this.#inFlight++;
      void this.#serve(exp.device, flags, command, cookie, offset, length, payload).finally(() => {
        this.#inFlight--;
        this.#held -= bytes;
        this.#notify();
      });
    }
  }

  /** Runs a request {@link NbdServerSession.#check} let through, and answers it. */
  async #serve(device: BlockDevice, flags: number, command: number, cookie: Buffer, offset: number, length: number, payload: Buffer | undefined): Promise<void> {
    try {
      switch (command) {
        case NBD_CMD_READ: {
          const data = this.#readBuffers.take(length);
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
          await device.write(payload!, offset);
          break;
        case NBD_CMD_WRITE_ZEROES:
          await device.writeZeroes(offset, length);
          break;
        case NBD_CMD_TRIM:
          await device.discard(offset, length);
          break;
        case NBD_CMD_FLUSH:
          await device.flush();
          break;
        case NBD_CMD_BLOCK_STATUS:
          this.#blockStatusReply(cookie, await allocationOf(device, offset, length, (flags & NBD_CMD_FLAG_REQ_ONE) !== 0));
          return;
      }
      if (flags & NBD_CMD_FLAG_FUA) await device.flush();
      this.#reply(cookie, command, 0);
    } catch (err) {
      this.#reply(cookie, command, nbdErrorValueOf(errnoOf(err)), (err as Error).message ?? String(err));
    }
  }

  /** Why a request must be refused (before its payload is read or the device touched), or undefined when it may run. */
  #check(exp: ServedExport, flags: number, command: number, offset: number, length: number): RequestError | undefined {
    const accepted = COMMAND_FLAGS[command];
    if (accepted === undefined) return new RequestError('EINVAL', `unknown ${commandName(command)}`);
    if (command === NBD_CMD_WRITE_ZEROES && flags & NBD_CMD_FLAG_FAST_ZERO) return new RequestError('EINVAL', 'fast zero was not offered');
    // proto.md: flags a command does not take get EINVAL (FUA is harmless everywhere; DF needs structured replies).
    const allowed = NBD_CMD_FLAG_FUA | (command === NBD_CMD_READ && !this.#structured ? 0 : accepted);
    if (flags & ~allowed) return new RequestError('EINVAL', `${commandName(command)} does not take flags 0x${(flags & ~allowed).toString(16)}`);
    switch (command) {
      case NBD_CMD_FLUSH:
        return undefined;
      case NBD_CMD_BLOCK_STATUS:
        if (!this.#structured || !this.#allocationSelected) return new RequestError('EINVAL', 'no metadata context was selected');
        return this.#checkRange(exp, offset, length, false) ?? (length === 0 ? new RequestError('EINVAL', 'zero-length block status') : undefined);
      case NBD_CMD_READ:
        return this.#checkRange(exp, offset, length, true);
      default: // WRITE, WRITE_ZEROES, TRIM
        if (exp.readOnly) return new RequestError('EPERM', 'the export is read-only');
        return this.#checkRange(exp, offset, length, command !== NBD_CMD_TRIM);
    }
  }

  #checkRange(exp: ServedExport, offset: number, length: number, sizeLimited: boolean): RequestError | undefined {
    const { size } = exp.device;
    const [min, , max] = blockSizesOf(exp.device);
    if (offset + length > size) return new RequestError('EINVAL', `request at ${offset} (+${length}) is past the end (${size} bytes)`);
    if (sizeLimited && length > max) return new RequestError('EINVAL', `request of ${length} bytes exceeds the maximum of ${max}`);
    if (min > 1 && (offset % min !== 0 || length % min !== 0)) return new RequestError('EINVAL', `request not aligned to ${min} bytes`);
    return undefined;
  }

  /** A client's failure as a typed error: protocol breaches are already NbdErrors, a lost connection becomes one. */
  #typed(err: unknown): BlockmirrorError {
    if (err instanceof BlockmirrorError) return err;
    const why = (err as Error).message ?? String(err);
    const when = this.#export ? `in the middle of a request to '${this.#export.name}'` : 'during the handshake';
    return new NbdError(ErrorCode.NBD_CONNECTION, `client connection lost ${when}: ${why}`, { cause: err });
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

  /** Waits while too many requests are in progress, or the client's buffer budget is used up. */
  async #roomForRequest(): Promise<void> {
    while (
      !this.#stopping &&
      !this.#socket.destroyed &&
      (this.#inFlight >= this.#host.maxRequestsInFlight || this.#held + this.#socket.writableLength >= this.#host.maxBufferBytes)
    ) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /** Waits until `bytes` more fit in the budget; with nothing in progress any one request fits (it is at most 32 MiB). */
  async #roomFor(bytes: number): Promise<void> {
    while (
      !this.#stopping &&
      !this.#socket.destroyed &&
      this.#inFlight > 0 &&
      this.#held + this.#socket.writableLength + bytes > this.#host.maxBufferBytes
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

const EMPTY = Buffer.alloc(0);

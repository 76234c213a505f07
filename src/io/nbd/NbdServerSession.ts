import type { Socket } from 'node:net';
import { errnoOf } from '../../errors.js';
import { allocSkewedBuffer } from '../../util/skewedBuffer.js';
import { BufferPool } from '../../workers/BufferPool.js';
import type { BlockDevice } from '../BlockDevice.js';
import { ALLOCATION_CONTEXT_ID, blockSizesOf, HangUp, NbdServerHandshake, type HandshakeHost, type ServedExport } from './NbdServerHandshake.js';
import {
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
import { SocketReader } from './SocketReader.js';

/** Queued reply bytes past which the session stops reading new requests until the client reads. */
const REPLY_BACKLOG_BYTES = 16 << 20;
/** Extents in one block status reply at most. */
const MAX_STATUS_EXTENTS = 4096;

/** What a session needs from its server: the handshake's needs, and its own limits. */
export interface SessionHost extends HandshakeHost {
  readonly maxRequestsInFlight: number;
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

/**
 * One client connection to an {@link NbdServer}: the server's side of the fixed-newstyle
 * handshake ({@link NbdServerHandshake}), then the transmission phase. Requests are served
 * concurrently (up to the server's per-client limit) and answered as they finish, in any order.
 * Every request is checked before it touches the device: out of bounds, over the maximum size,
 * misaligned, or writing a read-only export gets an error reply (EINVAL, EPERM), never an
 * exception. Input that cannot be parsed further (bad magic, an oversized payload, a truncated
 * request) closes this connection only.
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
      const chosen = await new NbdServerHandshake(this.#socket, this.#reader, this.#host).run();
      if (!chosen) return; // the client left in good order
      this.#export = chosen.served;
      this.#structured = chosen.structured;
      this.#allocationSelected = chosen.allocation;
      await this.#transmission();
    } catch (err) {
      const quietly = this.#stopping || (this.#betweenRequests && this.#reader.buffered === 0);
      if (!quietly) this.#host.onClientError(err as Error);
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

const EMPTY = Buffer.alloc(0);

import { DeviceError, ErrorCode, IoError, NbdError, type IoOperation } from '../../errors.js';
import type { AllocationExtent, BlockDevice, NbdDeviceSpec } from '../BlockDevice.js';
import type { NbdConnectOptions } from './NbdClientHandshake.js';
import { NbdConnection } from './NbdConnection.js';
import {
  DEFAULT_MAX_BLOCK_SIZE,
  canFlush,
  canMultiConn,
  canTrim,
  canWriteZeroes,
  isReadOnly,
  type NbdExportInfo,
} from './NbdExportInfo.js';
import { allocSkewedBuffer } from '../../util/skewedBuffer.js';
import { formatNbdUri, parseNbdUri, type NbdAddress } from './NbdUri.js';

/** Largest WRITE_ZEROES or TRIM sent when the server sets no maximum: a power of two, so pieces stay aligned. */
const MAX_UNBOUNDED_REQUEST = 1 << 30;
/** Connections to an export that advertises multi-conn, unless told otherwise (nbdcopy's default too). */
export const DEFAULT_NBD_CONNECTIONS = 4;
/**
 * Time an extra connection may take to be greeted. A server at its connection limit (qemu-nbd
 * --shared=2 with a third client) accepts and then says nothing; such connections are dropped
 * and the device carries on with those it has.
 */
const EXTRA_CONNECTION_TIMEOUT_MS = 3000;
/** Zeros are written from one shared buffer when the server has no WRITE_ZEROES. */
let zeroBuffer: Buffer | undefined;

/** Options of {@link NbdDevice.open} beyond the spec. */
export interface NbdDeviceOptions extends NbdConnectOptions {
  /**
   * Open a new connection on the next request after the connection is lost (default true).
   * Requests in flight when it is lost still fail, at once, with ECONNRESET.
   */
  readonly autoReconnect?: boolean;
  /**
   * Connections to open when the export advertises NBD_FLAG_CAN_MULTI_CONN (default 4; the
   * first is used at once, the others join as they are greeted). Without multi-conn the device
   * always uses exactly one: proto.md says a client SHOULD NOT spread requests over several, and
   * a flush would only cover its own connection's writes.
   */
  readonly connections?: number;
}

/**
 * An NBD export as a {@link BlockDevice}: the engine's requests become NBD requests, pipelined,
 * on one connection, or spread over several (each request to the least busy) where the server
 * advertises multi-conn. Requests are split to the server's maximum block size and, where they
 * are not aligned to its minimum block size, widened by read-modify-write (not atomic against a
 * concurrent overlapping write, which the copy engine never issues). Zero chunks use
 * WRITE_ZEROES where the server has it, discards TRIM, and `blockStatus` reads `base:allocation`.
 *
 * Durability: `flush` covers every write this device completed before it was called (on a
 * multi-conn export a flush on one connection covers them all; otherwise there is only one).
 * When a connection is lost with writes the server acknowledged but did not flush, the next
 * `flush` fails with EIO (once), since those writes may never reach stable storage.
 */
export class NbdDevice implements BlockDevice {
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** The server's minimum block size: offsets and lengths that are multiples of it need no read-modify-write. */
  readonly blockSize: number;
  /** Largest READ or WRITE sent in one request (the server's maximum, at most 32 MiB). */
  readonly maxRequest: number;
  /** True when the server has WRITE_ZEROES: a zero chunk is zeroed without sending data. */
  readonly efficientZeroes: boolean;
  /** The server's preferred block size (requests aligned to it avoid read-modify-write on the server). */
  readonly preferredBlockSize: number;
  /** True when a flush on any connection to this export covers writes made on every other one (NBD_FLAG_CAN_MULTI_CONN). */
  readonly canMultiConn: boolean;
  /** Times the device opened a new first connection after losing all it had. */
  reconnects = 0;
  readonly #address: NbdAddress;
  readonly #options: NbdDeviceOptions;
  readonly #writable: boolean;
  readonly #maxUnpayloaded: number;
  /** Live connections; the first is the one the device was opened (or last reopened) with. */
  #connections: NbdConnection[];
  #reopening: Promise<NbdConnection> | undefined;
  /** Extra connections being opened in the background, and how to give up on them. */
  #growth: { readonly done: Promise<void>; readonly abort: AbortController } | undefined;
  /** Per connection: writes the server acknowledged since the last flush that covered them. */
  readonly #unflushed = new Map<NbdConnection, number>();
  /** A connection was lost with acknowledged, unflushed writes: the next flush must say so. */
  #writesLost = false;
  #closed = false;
  #info: NbdExportInfo;

  private constructor(address: NbdAddress, connection: NbdConnection, writable: boolean, options: NbdDeviceOptions) {
    const info = connection.info;
    this.#address = address;
    this.#options = options;
    this.#writable = writable;
    this.#connections = [];
    this.#info = info;
    this.description = formatNbdUri(address);
    this.size = info.size;
    this.readOnly = !writable;
    this.blockSize = info.minBlockSize;
    this.preferredBlockSize = info.preferredBlockSize;
    this.maxRequest = alignDown(Math.min(info.maxBlockSize, DEFAULT_MAX_BLOCK_SIZE), info.minBlockSize);
    this.#maxUnpayloaded =
      info.blockSizeAdvertised && info.maxBlockSize !== 0xffff_ffff ? info.maxBlockSize : alignDown(MAX_UNBOUNDED_REQUEST, info.minBlockSize);
    this.efficientZeroes = canWriteZeroes(info);
    this.canMultiConn = canMultiConn(info);
    this.#adopt(connection);
    this.#grow();
  }

  /**
   * Connects to the export a spec (or URI) names. A writable open of a read-only export is
   * refused with {@link DeviceError} `BM_ERR_TARGET_READ_ONLY`; connection failures are
   * {@link NbdError}s, a bad URI an `InvalidArgumentError` with `BM_ERR_BAD_URI`.
   */
  static async open(spec: NbdDeviceSpec | string, options: NbdDeviceOptions = {}): Promise<NbdDevice> {
    const s: NbdDeviceSpec = typeof spec === 'string' ? { kind: 'nbd', uri: spec } : spec;
    const address = parseNbdUri(s.uri);
    const writable = s.writable === true;
    const connection = await NbdConnection.open(address, { ...options, allocation: options.allocation ?? !writable });
    if (writable && isReadOnly(connection.info)) {
      await connection.close();
      const role = s.role ?? 'source';
      throw new DeviceError(
        ErrorCode.TARGET_READ_ONLY,
        s.uri,
        `${role} ${formatNbdUri(address)} is a read-only NBD export; it cannot be written`,
      );
    }
    return new NbdDevice(address, connection, writable, { ...options, allocation: options.allocation ?? !writable });
  }

  /** Connections in use now (more than one only on a multi-conn export). */
  get connections(): number {
    return this.#connections.length;
  }

  /** What the handshake settled (size, flags, block sizes, structured replies, base:allocation). */
  get info(): NbdExportInfo {
    return this.#info;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#checkRange('read', offset, buf.length);
    if (buf.length === 0) return;
    if (this.#aligned(offset, buf.length)) {
      await this.#pieces('read', offset, buf.length, this.maxRequest, (c, at, n) => c.read(buf.subarray(at - offset, at - offset + n), at));
      return;
    }
    const [start, end] = this.#widen(offset, buf.length);
    const wide = Buffer.allocUnsafe(end - start);
    await this.read(wide, start);
    wide.copy(buf, 0, offset - start, offset - start + buf.length);
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    this.#checkWritable('write');
    this.#checkRange('write', offset, data.length);
    if (data.length === 0) return;
    if (this.#aligned(offset, data.length)) {
      await this.#pieces('write', offset, data.length, this.maxRequest, (c, at, n) => this.#counted(c, c.write(data.subarray(at - offset, at - offset + n), at)));
      return;
    }
    // Read-modify-write of the blocks the request touches.
    const [start, end] = this.#widen(offset, data.length);
    const wide = Buffer.allocUnsafe(end - start);
    await this.read(wide, start);
    wide.set(data, offset - start);
    await this.write(wide, start);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkWritable('write');
    this.#checkRange('write', offset, length);
    if (length === 0) return;
    if (!this.efficientZeroes) {
      zeroBuffer ??= Buffer.alloc(DEFAULT_MAX_BLOCK_SIZE);
      for (let at = offset; at < offset + length; at += zeroBuffer.length) {
        await this.write(zeroBuffer.subarray(0, Math.min(zeroBuffer.length, offset + length - at)), at);
      }
      return;
    }
    const [inner, innerEnd] = this.#shrink(offset, length);
    const edges: Promise<void>[] = [];
    if (inner >= innerEnd) return this.write(Buffer.alloc(length), offset);
    if (inner > offset) edges.push(this.write(Buffer.alloc(inner - offset), offset));
    if (innerEnd < offset + length) edges.push(this.write(Buffer.alloc(offset + length - innerEnd), innerEnd));
    await Promise.all([
      ...edges,
      this.#pieces('write', inner, innerEnd - inner, this.#maxUnpayloaded, (c, at, n) => this.#counted(c, c.writeZeroes(at, n))),
    ]);
  }

  /** TRIM of the whole blocks inside the range, where the server has TRIM; otherwise nothing (a discard is only a hint). */
  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable('discard');
    this.#checkRange('discard', offset, length);
    if (!canTrim(this.info) || length === 0) return;
    const [inner, innerEnd] = this.#shrink(offset, length);
    if (inner >= innerEnd) return;
    await this.#pieces('discard', inner, innerEnd - inner, this.#maxUnpayloaded, (c, at, n) => this.#counted(c, c.trim(at, n)));
  }

  async flush(): Promise<void> {
    if (!canFlush(this.info)) return; // the server has no volatile cache to flush
    const conn = await this.#connectionFor('flush');
    // The writes acknowledged so far are the ones this flush covers: on every connection with
    // multi-conn, and without it there is only the one.
    const covered = new Map(this.#unflushed);
    await conn.flush();
    for (const [c, n] of covered) if (this.#unflushed.has(c)) this.#unflushed.set(c, Math.max(0, this.#unflushed.get(c)! - n));
    if (this.#writesLost) {
      this.#writesLost = false;
      throw new IoError(
        'EIO',
        'flush',
        `flush of ${this.description}: a connection was lost after the server acknowledged writes it had not flushed; ` +
          `they may not be on stable storage`,
      );
    }
  }

  async blockStatus(offset: number, length: number): Promise<readonly AllocationExtent[]> {
    this.#checkRange('read', offset, length);
    if (this.info.allocationContextId === undefined || length === 0) return [{ length, hole: false, zero: false }];
    const [start, end] = this.#widen(offset, length);
    const wanted = Math.min(end - start, this.#maxUnpayloaded);
    const conn = await this.#connectionFor('read');
    const extents = await conn.blockStatus(start, wanted);
    // Drop what widening added in front, so the first extent starts at `offset`.
    let skip = offset - start;
    const out: AllocationExtent[] = [];
    for (const e of extents) {
      if (skip >= e.length) {
        skip -= e.length;
        continue;
      }
      out.push(skip > 0 ? { ...e, length: e.length - skip } : e);
      skip = 0;
    }
    return out.length > 0 ? out : [{ length, hole: false, zero: false }];
  }

  /** Skewed off page alignment: a file source reads into these from the page cache, which is much faster so. */
  async allocBuffer(size: number): Promise<Buffer> {
    return allocSkewedBuffer(size);
  }

  /**
   * Drops every connection and opens a new one, checking the export is the same size (and, on
   * a multi-conn export, opens the others again). Requests in flight fail with ECONNRESET.
   */
  async reconnect(): Promise<void> {
    await this.#stopGrowing();
    for (const c of [...this.#connections]) c.destroy('dropped for a reconnect');
    await this.#connectionFor('open');
  }

  /** Leaves cleanly (NBD_CMD_DISC on each connection after its requests in flight). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#stopGrowing();
    await Promise.all(this.#connections.map((c) => c.close()));
  }

  /** Starts using a connection: requests go to it, and losing it with unflushed writes is remembered. */
  #adopt(conn: NbdConnection): void {
    this.#connections.push(conn);
    this.#unflushed.set(conn, 0);
    conn.onLost(() => {
      this.#connections = this.#connections.filter((c) => c !== conn);
      if ((this.#unflushed.get(conn) ?? 0) > 0) this.#writesLost = true;
      this.#unflushed.delete(conn);
    });
  }

  /** On a multi-conn export, opens the extra connections in the background; requests use them as they arrive. */
  #grow(): void {
    const wanted = this.canMultiConn ? Math.max(1, this.#options.connections ?? DEFAULT_NBD_CONNECTIONS) - this.#connections.length : 0;
    if (wanted <= 0) return;
    const abort = new AbortController();
    const first = this.#connections[0]!.info;
    const one = async (): Promise<void> => {
      try {
        const conn = await NbdConnection.open(this.#address, {
          ...this.#options,
          handshakeTimeoutMs: Math.min(this.#options.handshakeTimeoutMs ?? EXTRA_CONNECTION_TIMEOUT_MS, EXTRA_CONNECTION_TIMEOUT_MS),
          signal: abort.signal,
        });
        const same = conn.info.size === first.size && conn.info.transmissionFlags === first.transmissionFlags;
        if (this.#closed || abort.signal.aborted || !same) await conn.close();
        else this.#adopt(conn);
      } catch {
        // A server may take fewer connections than we ask for: carry on with those we have.
      }
    };
    this.#growth = { abort, done: Promise.all(Array.from({ length: wanted }, one)).then(() => undefined) };
  }

  async #stopGrowing(): Promise<void> {
    const growth = this.#growth;
    this.#growth = undefined;
    growth?.abort.abort();
    await growth?.done;
  }

  /** A live connection (the least busy), reopening one if all were lost (once for all callers that find them lost). */
  async #connectionFor(operation: IoOperation): Promise<NbdConnection> {
    if (this.#closed) throw new IoError('EBADF', operation, `${this.description} is closed`);
    const live = this.#pick();
    if (live) return live;
    if (this.#options.autoReconnect === false) {
      throw new IoError('ECONNRESET', operation, `${this.description}: the connection was lost`);
    }
    this.#reopening ??= this.#reopen(operation).finally(() => (this.#reopening = undefined));
    return this.#reopening;
  }

  /** The live connection with the fewest requests in flight. */
  #pick(): NbdConnection | undefined {
    let best: NbdConnection | undefined;
    for (const c of this.#connections) if (!c.lost && (!best || c.inFlight < best.inFlight)) best = c;
    return best;
  }

  async #reopen(operation: IoOperation): Promise<NbdConnection> {
    let conn: NbdConnection;
    try {
      conn = await NbdConnection.open(this.#address, this.#options);
    } catch (err) {
      const errno = (err as { cause?: { code?: string } }).cause?.code ?? 'ECONNRESET';
      throw new IoError(/^E[A-Z0-9]+$/.test(errno) ? errno : 'ECONNRESET', operation, `reconnecting to ${this.description} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const changed =
      conn.info.size !== this.size ? `its size changed from ${this.size} to ${conn.info.size}` : this.#writable && isReadOnly(conn.info) ? 'it became read-only' : '';
    if (changed) {
      await conn.close();
      throw new IoError('EIO', operation, `reconnected to ${this.description}, but ${changed}`, {
        cause: new NbdError(ErrorCode.NBD_CONNECTION, `export changed across a reconnect: ${changed}`),
      });
    }
    this.#info = conn.info;
    this.#adopt(conn);
    this.reconnects++;
    this.#grow();
    return conn;
  }

  /** Splits `[offset, offset+length)` into requests of at most `max` bytes and runs them at once. */
  async #pieces(
    operation: IoOperation,
    offset: number,
    length: number,
    max: number,
    send: (conn: NbdConnection, at: number, n: number) => Promise<void>,
  ): Promise<void> {
    const conn = await this.#connectionFor(operation);
    if (length <= max) return send(conn, offset, length);
    const parts: Promise<void>[] = [];
    for (let at = offset; at < offset + length; at += max) parts.push(send(this.#pick() ?? conn, at, Math.min(max, offset + length - at)));
    await Promise.all(parts);
  }

  /** Counts a write once the server acknowledges it, so a lost connection knows whether unflushed data went with it. */
  async #counted(conn: NbdConnection, request: Promise<void>): Promise<void> {
    await request;
    const n = this.#unflushed.get(conn);
    if (n !== undefined) this.#unflushed.set(conn, n + 1);
  }

  #aligned(offset: number, length: number): boolean {
    return this.blockSize === 1 || (offset % this.blockSize === 0 && length % this.blockSize === 0);
  }

  /** The smallest aligned range around `[offset, offset+length)`. */
  #widen(offset: number, length: number): [number, number] {
    const start = alignDown(offset, this.blockSize);
    const end = Math.min(this.size, alignDown(offset + length + this.blockSize - 1, this.blockSize));
    if (end < offset + length) {
      throw new IoError('EINVAL', 'read', `${this.description}: bytes past the last whole ${this.blockSize}-byte block cannot be addressed`, { offset, length });
    }
    return [start, end];
  }

  /** The largest aligned range inside `[offset, offset+length)` (empty when there is none). */
  #shrink(offset: number, length: number): [number, number] {
    return [alignDown(offset + this.blockSize - 1, this.blockSize), alignDown(offset + length, this.blockSize)];
  }

  #checkRange(operation: IoOperation, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new IoError('EINVAL', operation, `${operation} of ${length} bytes at offset ${offset} is outside ${this.description} (${this.size} bytes)`, {
        offset,
        length,
      });
    }
  }

  #checkWritable(operation: IoOperation): void {
    if (!this.#writable) throw new IoError('EBADF', operation, `${this.description} was opened read-only`);
  }
}

function alignDown(n: number, align: number): number {
  return align === 1 ? n : n - (n % align);
}

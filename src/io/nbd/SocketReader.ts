import type { Socket } from 'node:net';

/** Default bound on bytes received ahead of the reader before the socket is paused. */
export const DEFAULT_READ_AHEAD_BYTES = 8 << 20;

interface PendingRead {
  /** Bytes wanted. */
  readonly length: number;
  /** Destination for `readInto`, or undefined for `read`/`skip`. */
  readonly into: Uint8Array | undefined;
  readonly discard: boolean;
  /** Bytes of a `readInto` or `skip` already delivered. */
  done: number;
  readonly resolve: (value: Buffer) => void;
  readonly reject: (err: Error) => void;
}

/** Options of {@link SocketReader}. */
export interface SocketReaderOptions {
  /**
   * Bytes received and not yet read past which the socket is paused, so a peer sending faster
   * than we read waits in TCP instead of in our memory (default {@link DEFAULT_READ_AHEAD_BYTES}).
   * A read waiting for more bytes than this still gets them.
   */
  readonly readAheadBytes?: number;
}

/**
 * Reads a socket as a stream of exact-length messages: `read(n)` resolves with exactly n bytes,
 * however the peer's data was split into packets. One read at a time (NBD is parsed in order).
 *
 * Payloads go straight from the socket's chunks into the caller's buffer with `readInto` (one
 * copy, no concatenation, and as they arrive: a 32 MiB payload is never buffered twice); headers
 * come back as views of a chunk where they fit in one, so the hot path allocates nothing per
 * message. What arrives ahead of the reader is bounded by `readAheadBytes`.
 */
export class SocketReader {
  readonly #socket: Socket;
  readonly #chunks: Buffer[] = [];
  /** Bytes of `#chunks[0]` already consumed. */
  #head = 0;
  #buffered = 0;
  #pending: PendingRead | undefined;
  #ended: Error | undefined;
  #paused = false;
  #readAhead: number;
  /** Reused for headers that straddle two chunks. */
  #scratch = Buffer.allocUnsafe(64);

  constructor(socket: Socket, options: SocketReaderOptions = {}) {
    this.#socket = socket;
    this.#readAhead = options.readAheadBytes ?? DEFAULT_READ_AHEAD_BYTES;
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      this.#serve();
      this.#flow();
    });
    socket.on('end', () => this.#end(new Error('the peer closed the connection')));
    socket.on('close', () => this.#end(new Error('the connection closed')));
    socket.on('error', (err) => this.#end(err));
  }

  /** Bytes received and not yet read. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Why the stream ended, once it has. */
  get endReason(): Error | undefined {
    return this.#ended;
  }

  /** The read-ahead bound; changing it takes effect at once (a server tightens it during the handshake). */
  get readAheadBytes(): number {
    return this.#readAhead;
  }

  set readAheadBytes(bytes: number) {
    this.#readAhead = bytes;
    this.#flow();
  }

  /**
   * Exactly `length` bytes. The buffer may be a view of internal memory that the next read
   * reuses: decode it before reading again.
   */
  read(length: number): Promise<Buffer> {
    return this.#request(length, undefined, false);
  }

  /** Fills `dst` with the next `dst.length` bytes. */
  async readInto(dst: Uint8Array): Promise<void> {
    await this.#request(dst.length, dst, false);
  }

  /** Reads and drops `length` bytes (without holding them: they are dropped as they arrive). */
  async skip(length: number): Promise<void> {
    await this.#request(length, undefined, true);
  }

  #request(length: number, into: Uint8Array | undefined, discard: boolean): Promise<Buffer> {
    if (this.#pending) return Promise.reject(new Error('SocketReader: a read is already pending'));
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.#buffered >= length) {
      // Fast path: the bytes are here (often the case for headers right after a payload).
      const out = this.#take(length, into, discard);
      this.#flow();
      return Promise.resolve(out);
    }
    if (this.#ended) return Promise.reject(this.#ended);
    return new Promise((resolve, reject) => {
      this.#pending = { length, into, discard, done: 0, resolve, reject };
      this.#serve();
      this.#flow();
    });
  }

  #serve(): void {
    const p = this.#pending;
    if (!p) return;
    if (p.into || p.discard) {
      // Streamed: hand over what is here now, so the bytes never pile up in chunks.
      const n = Math.min(this.#buffered, p.length - p.done);
      if (n > 0) {
        this.#copyOut(n, p.into?.subarray(p.done, p.done + n));
        p.done += n;
      }
      if (p.done < p.length) return;
      this.#pending = undefined;
      p.resolve(EMPTY);
      return;
    }
    if (this.#buffered < p.length) return;
    this.#pending = undefined;
    p.resolve(this.#take(p.length, undefined, false));
  }

  /**
   * Pauses the socket when too much is buffered and nobody waits for it; resumes it as soon as a
   * read waits for bytes (it could never be served otherwise) or the buffer has halved.
   */
  #flow(): void {
    if (this.#ended) return;
    if (!this.#paused && !this.#pending && this.#buffered > this.#readAhead) {
      this.#paused = true;
      this.#socket.pause();
    } else if (this.#paused && (this.#pending || this.#buffered <= this.#readAhead / 2)) {
      this.#paused = false;
      this.#socket.resume();
    }
  }

  #end(reason: Error): void {
    this.#ended ??= reason;
    const p = this.#pending;
    if (p) {
      this.#pending = undefined;
      p.reject(this.#ended);
    }
  }

  #take(length: number, into: Uint8Array | undefined, discard: boolean): Buffer {
    const first = this.#chunks[0]!;
    if (!into && !discard && first.length - this.#head >= length) {
      const out = first.subarray(this.#head, this.#head + length);
      this.#consume(length);
      return out;
    }
    if (into || discard) {
      this.#copyOut(length, into);
      return EMPTY;
    }
    if (this.#scratch.length < length) this.#scratch = Buffer.allocUnsafe(Math.max(length, 2 * this.#scratch.length));
    this.#copyOut(length, this.#scratch);
    return this.#scratch.subarray(0, length);
  }

  /** Moves `length` buffered bytes into `dst` (or drops them). */
  #copyOut(length: number, dst: Uint8Array | undefined): void {
    let done = 0;
    while (done < length) {
      const chunk = this.#chunks[0]!;
      const n = Math.min(chunk.length - this.#head, length - done);
      if (dst) chunk.copy(dst, done, this.#head, this.#head + n);
      this.#consume(n);
      done += n;
    }
  }

  #consume(n: number): void {
    this.#head += n;
    this.#buffered -= n;
    if (this.#head === this.#chunks[0]!.length) {
      this.#chunks.shift();
      this.#head = 0;
    }
  }
}

const EMPTY = Buffer.alloc(0);

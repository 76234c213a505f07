import type { Socket } from 'node:net';

/** Bytes buffered ahead of the reader before the socket is paused (the peer then waits in TCP). */
const PAUSE_ABOVE_BYTES = 64 << 20;

interface PendingRead {
  /** Bytes wanted. */
  readonly length: number;
  /** Destination for `readInto`, or undefined for `read`/`skip`. */
  readonly into: Uint8Array | undefined;
  readonly discard: boolean;
  readonly resolve: (value: Buffer) => void;
  readonly reject: (err: Error) => void;
}

/**
 * Reads a socket as a stream of exact-length messages: `read(n)` resolves with exactly n bytes,
 * however the peer's data was split into packets. One read at a time (NBD is parsed in order).
 *
 * Payloads go straight from the socket's chunks into the caller's buffer with `readInto` (one
 * copy, no concatenation); headers come back as views of a chunk where they fit in one, so the
 * hot path allocates nothing per message.
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
  /** Reused for headers that straddle two chunks. */
  #scratch = Buffer.allocUnsafe(64);

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      this.#serve();
      if (this.#buffered > PAUSE_ABOVE_BYTES && !this.#paused) {
        this.#paused = true;
        socket.pause();
      }
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

  /** Reads and drops `length` bytes. */
  async skip(length: number): Promise<void> {
    await this.#request(length, undefined, true);
  }

  #request(length: number, into: Uint8Array | undefined, discard: boolean): Promise<Buffer> {
    if (this.#pending) return Promise.reject(new Error('SocketReader: a read is already pending'));
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.#buffered >= length) {
      // Fast path: the bytes are here (often the case for headers right after a payload).
      return Promise.resolve(this.#take(length, into, discard));
    }
    if (this.#ended) return Promise.reject(this.#ended);
    return new Promise((resolve, reject) => {
      this.#pending = { length, into, discard, resolve, reject };
    });
  }

  #serve(): void {
    const p = this.#pending;
    if (!p || this.#buffered < p.length) return;
    this.#pending = undefined;
    p.resolve(this.#take(p.length, p.into, p.discard));
  }

  #end(reason: Error): void {
    this.#ended ??= reason;
    const p = this.#pending;
    if (p && this.#buffered < p.length) {
      this.#pending = undefined;
      p.reject(this.#ended);
    }
  }

  #take(length: number, into: Uint8Array | undefined, discard: boolean): Buffer {
    const first = this.#chunks[0]!;
    let out: Buffer;
    if (!into && !discard && first.length - this.#head >= length) {
      out = first.subarray(this.#head, this.#head + length);
      this.#consume(length);
    } else {
      if (!into && !discard && this.#scratch.length < length) this.#scratch = Buffer.allocUnsafe(Math.max(length, 2 * this.#scratch.length));
      const dst = into ?? (discard ? undefined : this.#scratch);
      let done = 0;
      while (done < length) {
        const chunk = this.#chunks[0]!;
        const n = Math.min(chunk.length - this.#head, length - done);
        if (dst) chunk.copy(dst, done, this.#head, this.#head + n);
        this.#consume(n);
        done += n;
      }
      out = dst === undefined ? EMPTY : into ? EMPTY : this.#scratch.subarray(0, length);
    }
    if (this.#paused && this.#buffered < PAUSE_ABOVE_BYTES / 2) {
      this.#paused = false;
      this.#socket.resume();
    }
    return out;
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

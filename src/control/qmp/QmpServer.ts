import { chmod, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { JsonStream, MAX_JSON_BYTES, type JsonItem } from './JsonStream.js';
import { QmpError, toQmpError } from './QmpError.js';
import { isObject } from './schema.js';
import { ErrorCode, InvalidArgumentError } from '../../errors.js';
import { someoneListens } from '../../util/unixSocket.js';

/** What QMP says about the server in its greeting and in query-version. */
export interface QmpVersion {
  readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
  readonly package: string;
}

/** Concurrent clients one monitor socket serves by default; the next is refused and closed. */
export const MAX_QMP_CLIENTS = 64;
/**
 * Commands (and error replies to bad input) a client may have queued, not yet answered, by
 * default: a client that sends more is not read from until the queue drains.
 */
export const MAX_PENDING_COMMANDS = 64;
/**
 * Bytes of replies a client may leave unread by default before its next command waits (and so,
 * once its queue is full, its socket is not read). Twice this, unread when an event is due,
 * and the client is disconnected: it is not reading at all.
 */
export const MAX_WRITE_BUFFER = 1 << 20;
/** Milliseconds a client has by default, after the greeting, to send `qmp_capabilities`. */
export const NEGOTIATION_TIMEOUT_MS = 30_000;

/**
 * What one QMP client can make the daemon hold, and for how long. Together they bound a
 * connection's memory: `maxJsonBytes` of input being parsed, `maxPendingCommands` commands
 * queued, about `maxWriteBuffer` of output unread.
 */
export interface QmpLimits {
  /** Clients connected at once (default {@link MAX_QMP_CLIENTS}). */
  readonly maxClients: number;
  /** Longest JSON text a client may send (default {@link MAX_JSON_BYTES}). */
  readonly maxJsonBytes: number;
  /** Commands queued, not yet answered, per client (default {@link MAX_PENDING_COMMANDS}). */
  readonly maxPendingCommands: number;
  /** Bytes of output unread by a client (default {@link MAX_WRITE_BUFFER}). */
  readonly maxWriteBuffer: number;
  /** Milliseconds from the greeting to `qmp_capabilities` (default {@link NEGOTIATION_TIMEOUT_MS}). */
  readonly negotiationTimeoutMs: number;
}

/** The limits a monitor has unless told otherwise. */
export const DEFAULT_QMP_LIMITS: QmpLimits = {
  maxClients: MAX_QMP_CLIENTS,
  maxJsonBytes: MAX_JSON_BYTES,
  maxPendingCommands: MAX_PENDING_COMMANDS,
  maxWriteBuffer: MAX_WRITE_BUFFER,
  negotiationTimeoutMs: NEGOTIATION_TIMEOUT_MS,
};

/** Runs one command (after capabilities negotiation); throws {@link QmpError} to answer an error. */
export interface QmpDispatcher {
  dispatch(name: string, args: Record<string, unknown> | undefined, session: QmpSession): Promise<unknown>;
}

/** An event's timestamp as QEMU sends it: wall-clock seconds and microseconds. */
export function qmpTimestamp(): { seconds: number; microseconds: number } {
  const micros = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { seconds: Math.floor(micros / 1e6), microseconds: micros % 1e6 };
}

/**
 * One QMP client: greeting, `qmp_capabilities`, then commands, answered one at a time in order
 * (as a QEMU monitor without out-of-band execution does), with events in between.
 *
 * A client is held to its {@link QmpLimits}: input is parsed only while fewer than
 * `maxPendingCommands` items wait for an answer (otherwise the socket is paused, so the kernel's
 * buffer, then the client, waits); a command waits while more than `maxWriteBuffer` bytes of
 * output are unread; a client that does not negotiate in time is told so and closed.
 */
export class QmpSession {
  readonly #socket: Socket;
  readonly #dispatcher: QmpDispatcher;
  readonly #limits: QmpLimits;
  readonly #stream: JsonStream;
  #negotiated = false;
  #queue: Promise<void> = Promise.resolve();
  /** Items queued and not yet answered. */
  #pending = 0;
  #paused = false;
  #afterReply: (() => void) | undefined;
  #negotiationTimer: NodeJS.Timeout | undefined;
  /** Resolves once everything written so far has been handed to the kernel. */
  #flushed: Promise<void> = Promise.resolve();
  readonly closed: Promise<void>;

  constructor(socket: Socket, dispatcher: QmpDispatcher, version: QmpVersion, limits: QmpLimits = DEFAULT_QMP_LIMITS) {
    this.#socket = socket;
    this.#dispatcher = dispatcher;
    this.#limits = limits;
    this.#stream = new JsonStream({ maxBytes: limits.maxJsonBytes });
    socket.setEncoding('utf8');
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        clearTimeout(this.#negotiationTimer);
        resolve();
      }),
    );
    socket.on('error', () => {});
    socket.on('data', (chunk: string) => this.#take(chunk));
    this.#send({ QMP: { version, capabilities: [] } });
    this.#negotiationTimer = setTimeout(() => {
      this.#send({ error: new QmpError(`No capabilities negotiation within ${duration(limits.negotiationTimeoutMs)}: closing the connection`).toJSON() });
      this.close();
    }, limits.negotiationTimeoutMs);
    this.#negotiationTimer.unref();
  }

  /** True once the client has negotiated capabilities: it receives events from then on. */
  get negotiated(): boolean {
    return this.#negotiated;
  }

  /** Runs `fn` once the reply to the command being executed has been sent (quit closes after its reply). */
  afterReply(fn: () => void): void {
    this.#afterReply = fn;
  }

  event(name: string, data: Record<string, unknown> | undefined, timestamp = qmpTimestamp()): void {
    if (!this.#negotiated) return;
    // Events are not held back (they would pile up here instead): a client this far behind does not read.
    if (this.#socket.writableLength > 2 * this.#limits.maxWriteBuffer) {
      this.#socket.destroy();
      return;
    }
    this.#send(data === undefined ? { event: name, timestamp } : { event: name, data, timestamp });
  }

  close(): void {
    clearTimeout(this.#negotiationTimer);
    this.#socket.end();
    setTimeout(() => this.#socket.destroy(), 1000).unref();
  }

  /** Parses what the queue has room for; the rest waits in the stream, and the socket is paused. */
  #take(chunk: string): void {
    if (this.#socket.destroyed) return; // the client has gone: what it sent is not worth parsing
    const room = this.#limits.maxPendingCommands - this.#pending;
    for (const item of this.#stream.push(chunk, Math.max(0, room))) this.#enqueueItem(item);
    const full = this.#stream.unscanned > 0 || this.#pending >= this.#limits.maxPendingCommands;
    if (full && !this.#paused) {
      this.#paused = true;
      this.#socket.pause();
    }
  }

  /** An item has been answered: take more of the input, and read the socket again once all is taken. */
  #answered(): void {
    this.#pending--;
    if (!this.#paused) return;
    if (this.#stream.unscanned > 0) this.#take('');
    if (this.#stream.unscanned === 0 && this.#pending < this.#limits.maxPendingCommands) {
      this.#paused = false;
      this.#socket.resume();
    }
  }

  #enqueueItem(item: JsonItem): void {
    this.#pending++;
    if (item.ok) this.#enqueue(item.value);
    else this.#enqueueReply({ error: new QmpError(item.error).toJSON() });
  }

  #enqueueReply(reply: Record<string, unknown>): void {
    this.#queue = this.#queue.then(async () => {
      await this.#unreadBelowLimit();
      this.#send(reply);
      this.#answered();
    });
  }

  #enqueue(request: unknown): void {
    this.#queue = this.#queue.then(async () => {
      await this.#unreadBelowLimit();
      const id = isObject(request) && 'id' in request ? { id: request.id } : {};
      let reply: Record<string, unknown>;
      try {
        reply = { return: (await this.#execute(request)) ?? {}, ...id };
      } catch (err) {
        reply = { ...id, error: toQmpError(err).toJSON() };
      }
      this.#send(reply);
      const after = this.#afterReply;
      this.#afterReply = undefined;
      after?.();
      this.#answered();
    });
  }

  /**
   * Waits while the client has more than `maxWriteBuffer` bytes of output unread: until all of it
   * has gone to the kernel (the last write's callback; 'drain' would not come for a limit below the
   * socket's high-water mark), or the client has gone.
   */
  async #unreadBelowLimit(): Promise<void> {
    while (this.#socket.writableLength > this.#limits.maxWriteBuffer && !this.#socket.destroyed) await Promise.race([this.#flushed, this.closed]);
  }

  async #execute(request: unknown): Promise<unknown> {
    if (!isObject(request)) throw new QmpError('QMP input must be a JSON object');
    for (const key of Object.keys(request)) {
      if (key !== 'execute' && key !== 'arguments' && key !== 'id' && key !== 'exec-oob') throw new QmpError(`QMP input member '${key}' is unexpected`);
    }
    if ('exec-oob' in request) throw new QmpError('QMP input member \'exec-oob\' is unexpected: out-of-band execution is not enabled');
    const name = request.execute;
    if (name === undefined) throw new QmpError("QMP input lacks member 'execute'");
    if (typeof name !== 'string') throw new QmpError("QMP input member 'execute' must be a string");
    const args = request.arguments;
    if (args !== undefined && !isObject(args)) throw new QmpError("QMP input member 'arguments' must be an object");
    if (name === 'qmp_capabilities') {
      if (this.#negotiated) throw new QmpError('Capabilities negotiation is already complete, command ignored', 'CommandNotFound');
      const enable = args?.enable;
      for (const key of Object.keys(args ?? {})) if (key !== 'enable') throw new QmpError(`Parameter '${key}' is unexpected`);
      if (enable !== undefined) {
        if (!Array.isArray(enable)) throw new QmpError("Invalid parameter type for 'enable', expected: array");
        for (const cap of enable) {
          if (cap !== 'oob') throw new QmpError(`Parameter 'enable[0]' does not accept value '${String(cap)}'`);
          throw new QmpError("Capability 'oob' not available");
        }
      }
      this.#negotiated = true;
      clearTimeout(this.#negotiationTimer);
      return {};
    }
    if (!this.#negotiated) throw new QmpError("Expecting capabilities negotiation with 'qmp_capabilities'", 'CommandNotFound');
    return this.#dispatcher.dispatch(name, args, this);
  }

  #send(message: unknown): void {
    if (!this.#socket.writable) return;
    const text = `${JSON.stringify(message)}\r\n`;
    this.#flushed = new Promise((resolve) => this.#socket.write(text, () => resolve()));
  }
}

/**
 * A QMP monitor on a Unix socket (mode 0600: only the daemon's user may drive it). Up to
 * `maxClients` clients at once, each with its own session; events go to every negotiated client.
 */
export class QmpServer {
  readonly path: string;
  readonly limits: QmpLimits;
  readonly #server: Server;
  readonly #sessions = new Set<QmpSession>();

  private constructor(path: string, server: Server, limits: QmpLimits) {
    this.path = path;
    this.#server = server;
    this.limits = limits;
  }

  /** Listens on `path`; `limits` override {@link DEFAULT_QMP_LIMITS} one by one. */
  static async listen(path: string, dispatcher: QmpDispatcher, version: QmpVersion, limits: Partial<QmpLimits> = {}): Promise<QmpServer> {
    const accept: { to?: QmpServer } = {};
    const server = createServer((socket) => accept.to?.accept(socket, dispatcher, version));
    const qmp = new QmpServer(path, server, checkLimits({ ...DEFAULT_QMP_LIMITS, ...definedOnly(limits) }));
    accept.to = qmp;
    try {
      await listenPrivately(server, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || (await someoneListens(path))) throw listenError(path, err);
      await unlink(path).catch(() => undefined); // a stale socket file nobody listens on
      await listenPrivately(server, path).catch((again: unknown) => {
        throw listenError(path, again);
      });
    }
    await chmod(path, 0o600);
    return qmp;
  }

  get sessions(): readonly QmpSession[] {
    return [...this.#sessions];
  }

  broadcast(name: string, data?: Record<string, unknown>): void {
    const timestamp = qmpTimestamp();
    for (const s of this.#sessions) s.event(name, data, timestamp);
  }

  /** Stops listening, closes every client and removes the socket file. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sessions) s.close();
    await Promise.all([closed, ...[...this.#sessions].map((s) => s.closed)]);
    await unlink(this.path).catch(() => undefined);
  }

  /** @internal A new client connection. */
  accept(socket: Socket, dispatcher: QmpDispatcher, version: QmpVersion): void {
    if (this.#sessions.size >= this.limits.maxClients) {
      // Told why in QMP's error shape instead of a greeting, then closed: a client sees an error, not a hang.
      socket.on('error', () => {});
      const error = new QmpError(`Too many QMP clients: this monitor serves at most ${this.limits.maxClients} at once`);
      socket.end(`${JSON.stringify({ error: error.toJSON() })}\r\n`);
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    const session = new QmpSession(socket, dispatcher, version, this.limits);
    this.#sessions.add(session);
    void session.closed.then(() => this.#sessions.delete(session));
  }
}

/** Milliseconds as a person says them: whole seconds in seconds. */
function duration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

/** The members of `o` that are set (an option left undefined keeps its default). */
function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Every limit must be a positive whole number: a zero or NaN limit would refuse everything, or nothing. */
function checkLimits(limits: QmpLimits): QmpLimits {
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || (value as number) < 1) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `QMP limit ${name} must be a positive whole number, not ${String(value)}`);
    }
  }
  return limits;
}

/** Listens with a umask that leaves the socket file to its owner from the moment it exists. */
function listenPrivately(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    const old = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.off('error', onError);
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
}

function listenError(path: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  return new Error(`cannot listen for QMP on ${path}: ${code === 'EADDRINUSE' ? 'another process listens there' : code}`, { cause: err });
}

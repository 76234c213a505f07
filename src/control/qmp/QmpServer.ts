import { chmod, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { JsonStream } from './JsonStream.js';
import { QmpError, toQmpError } from './QmpError.js';
import { isObject } from './schema.js';
import { someoneListens } from '../../util/unixSocket.js';

/** What QMP says about the server in its greeting and in query-version. */
export interface QmpVersion {
  readonly qemu: { readonly major: number; readonly minor: number; readonly micro: number };
  readonly package: string;
}

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
 */
export class QmpSession {
  readonly #socket: Socket;
  readonly #dispatcher: QmpDispatcher;
  readonly #stream = new JsonStream();
  #negotiated = false;
  #queue: Promise<void> = Promise.resolve();
  #afterReply: (() => void) | undefined;
  readonly closed: Promise<void>;

  constructor(socket: Socket, dispatcher: QmpDispatcher, version: QmpVersion) {
    this.#socket = socket;
    this.#dispatcher = dispatcher;
    socket.setEncoding('utf8');
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {});
    socket.on('data', (chunk: string) => {
      for (const item of this.#stream.push(chunk)) {
        if (item.ok) this.#enqueue(item.value);
        else this.#enqueueReply({ error: new QmpError(item.error).toJSON() });
      }
    });
    this.#send({ QMP: { version, capabilities: [] } });
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
    this.#send(data === undefined ? { event: name, timestamp } : { event: name, data, timestamp });
  }

  close(): void {
    this.#socket.end();
    setTimeout(() => this.#socket.destroy(), 1000).unref();
  }

  #enqueueReply(reply: Record<string, unknown>): void {
    this.#queue = this.#queue.then(() => this.#send(reply));
  }

  #enqueue(request: unknown): void {
    this.#queue = this.#queue.then(async () => {
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
    });
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
      return {};
    }
    if (!this.#negotiated) throw new QmpError("Expecting capabilities negotiation with 'qmp_capabilities'", 'CommandNotFound');
    return this.#dispatcher.dispatch(name, args, this);
  }

  #send(message: unknown): void {
    if (this.#socket.writable) this.#socket.write(`${JSON.stringify(message)}\r\n`);
  }
}

/**
 * A QMP monitor on a Unix socket (mode 0600: only the daemon's user may drive it). Any number of
 * clients at once, each with its own session; events go to every negotiated client.
 */
export class QmpServer {
  readonly path: string;
  readonly #server: Server;
  readonly #sessions = new Set<QmpSession>();

  private constructor(path: string, server: Server) {
    this.path = path;
    this.#server = server;
  }

  static async listen(path: string, dispatcher: QmpDispatcher, version: QmpVersion): Promise<QmpServer> {
    const accept: { to?: QmpServer } = {};
    const server = createServer((socket) => accept.to?.accept(socket, dispatcher, version));
    const qmp = new QmpServer(path, server);
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
    const session = new QmpSession(socket, dispatcher, version);
    this.#sessions.add(session);
    void session.closed.then(() => this.#sessions.delete(session));
  }
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

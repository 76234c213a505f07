import { connect, type Socket } from 'node:net';
import { BlockmirrorError, ErrorCode } from '../../errors.js';

/** Longest wait for a greeting or a reply, by default (ms). */
export const DEFAULT_QMP_CLIENT_TIMEOUT_MS = 10_000;

/** A command that got an error reply: QMP's error class and description. */
export class QmpReplyError extends BlockmirrorError {
  readonly errorClass: string;
  constructor(command: string, errorClass: string, desc: string) {
    super(ErrorCode.CONTROL_REPLY, `${command}: ${errorClass}: ${desc}`);
    this.errorClass = errorClass;
  }
}

/**
 * A QMP client for a monitor socket (a replica's control socket, a daemon's monitor): greeting,
 * qmp_capabilities, then commands with ids, each answered by `return` or `error`. Events are
 * ignored. Every wait is bounded; a lost connection rejects every command in flight.
 */
export class QmpClient {
  readonly #socket: Socket;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; name: string }>();
  #nextId = 1;
  #closed: Error | undefined;

  private constructor(socket: Socket, timeoutMs: number) {
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
  }

  /** Connects to the socket at `path` and negotiates capabilities. */
  static async connect(path: string, options: { timeoutMs?: number } = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_QMP_CLIENT_TIMEOUT_MS;
    const socket = connect({ path });
    socket.setEncoding('utf8');
    const client = new QmpClient(socket, timeoutMs);
    await client.#start(path);
    await client.execute('qmp_capabilities');
    return client;
  }

  /** True once the connection is gone. */
  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /** Runs a command; resolves with its return value, rejects with {@link QmpReplyError} or a connection error. */
  execute<T = unknown>(name: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closed);
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(connectionError(`no reply to ${name} within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#pending.set(id, {
        name,
        resolve: (v) => (clearTimeout(timer), resolve(v as T)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.#socket.write(`${JSON.stringify(args === undefined ? { execute: name, id } : { execute: name, arguments: args, id })}\n`);
    });
  }

  close(): Promise<void> {
    const socket = this.#socket;
    const closed = new Promise<void>((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve())));
    socket.end();
    return closed;
  }

  /** Waits for the greeting, then routes each reply line to its command. */
  #start(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      let greeted = false;
      let buffer = '';
      const timer = setTimeout(() => fail(connectionError(`${path}: no QMP greeting within ${this.#timeoutMs} ms`)), this.#timeoutMs);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        this.#closed ??= err;
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
        if (!greeted) reject(err);
        this.#socket.destroy();
      };
      this.#socket.on('error', (err) => fail(connectionError(`${path}: ${err.message}`)));
      this.#socket.on('close', () => fail(connectionError(`${path}: the connection closed`)));
      this.#socket.on('data', (chunk: string) => {
        buffer += chunk;
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (!line) continue;
          let msg: Record<string, unknown>;
          try {
            msg = JSON.parse(line) as Record<string, unknown>;
          } catch {
            fail(connectionError(`${path}: not QMP (a line that is not JSON)`));
            return;
          }
          if (!greeted) {
            if (!('QMP' in msg)) return fail(connectionError(`${path}: not QMP (no greeting)`));
            greeted = true;
            clearTimeout(timer);
            resolve();
            continue;
          }
          this.#reply(msg);
        }
      });
    });
  }

  #reply(msg: Record<string, unknown>): void {
    if ('event' in msg || typeof msg.id !== 'number') return;
    const pending = this.#pending.get(msg.id);
    if (!pending) return;
    this.#pending.delete(msg.id);
    if ('error' in msg) {
      const e = msg.error as { class?: unknown; desc?: unknown };
      pending.reject(new QmpReplyError(pending.name, String(e.class ?? 'GenericError'), String(e.desc ?? '')));
    } else pending.resolve(msg.return);
  }
}

function connectionError(message: string): BlockmirrorError {
  return new BlockmirrorError(ErrorCode.CONTROL_CONNECTION, message);
}

/**
 * A plain QMP client, written from QEMU's QMP specification (docs/interop/qmp-spec): JSON objects
 * over a stream socket; the server greets with {"QMP": {...}}, the client negotiates with
 * qmp_capabilities, then sends {"execute", "arguments"?, "id"?} and gets {"return"} or
 * {"error": {"class", "desc"}} (with the same id), with events {"event", "data", "timestamp"}
 * in between. Knows nothing of blockmirror: the same client drives qemu-storage-daemon.
 */
import { connect, type Socket } from 'node:net';

export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp: { seconds: number; microseconds: number };
}

export interface QmpErrorReply {
  readonly class: string;
  readonly desc: string;
}

/** A command that got an error reply. */
export class QmpCommandError extends Error {
  constructor(readonly reply: QmpErrorReply) {
    super(`${reply.class}: ${reply.desc}`);
  }
}

type Waiter = { match: (e: QmpEvent) => boolean; resolve: (e: QmpEvent) => void };

export class QmpClient {
  readonly greeting: Record<string, unknown>;
  /** Every event received so far, in order. */
  readonly events: QmpEvent[] = [];
  /** Replies with no id (errors about input that was not a command), in order. */
  readonly anonymous: Array<Record<string, unknown>> = [];
  readonly #socket: Socket;
  readonly #pending = new Map<number, (reply: Record<string, unknown>) => void>();
  #waiters: Waiter[] = [];
  #nextId = 1;
  #closed = false;

  private constructor(socket: Socket, greeting: Record<string, unknown>, rest: string) {
    this.#socket = socket;
    this.greeting = greeting;
    let buffer = rest;
    const take = (): void => {
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line) this.#receive(JSON.parse(line) as Record<string, unknown>);
      }
    };
    socket.on('data', (d: string) => {
      buffer += d;
      take();
    });
    socket.on('close', () => (this.#closed = true));
    take();
  }

  /** Connects and reads the greeting; negotiates capabilities unless `negotiate` is false. */
  static async connect(path: string, options: { negotiate?: boolean } = {}): Promise<QmpClient> {
    const socket = connect({ path });
    // Decoded as a stream, so a character split across two reads stays one character.
    socket.setEncoding('utf8');
    socket.on('error', () => {});
    const { greeting, rest } = await new Promise<{ greeting: Record<string, unknown>; rest: string }>((resolve, reject) => {
      let text = '';
      const onData = (d: string): void => {
        text += d;
        const nl = text.indexOf('\n');
        if (nl < 0) return;
        socket.off('data', onData);
        resolve({ greeting: JSON.parse(text.slice(0, nl)) as Record<string, unknown>, rest: text.slice(nl + 1) });
      };
      socket.on('data', onData);
      socket.once('error', reject);
    });
    const client = new QmpClient(socket, greeting, rest);
    if (options.negotiate !== false) await client.execute('qmp_capabilities');
    return client;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends a command and resolves with the whole reply (return or error). */
  request(name: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    const id = this.#nextId++;
    const reply = new Promise<Record<string, unknown>>((resolve) => this.#pending.set(id, resolve));
    this.#socket.write(`${JSON.stringify(args === undefined ? { execute: name, id } : { execute: name, arguments: args, id })}\n`);
    return reply;
  }

  /** Sends a command; resolves with its return value, rejects with {@link QmpCommandError}. */
  async execute<T = unknown>(name: string, args?: Record<string, unknown>): Promise<T> {
    const reply = await this.request(name, args);
    if ('error' in reply) throw new QmpCommandError(reply.error as QmpErrorReply);
    return reply.return as T;
  }

  /** Sends raw text (for malformed-input tests). */
  sendRaw(text: string): void {
    this.#socket.write(text);
  }

  /** Takes the oldest anonymous reply (one to input that had no id), waiting for one if there is none. */
  async nextAnonymous(timeoutMs = 5000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (this.anonymous.length === 0) {
      if (Date.now() > deadline) throw new Error('no reply');
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.anonymous.shift()!;
  }

  /** The first event (already received or still to come) named `name` that `match` accepts. */
  waitEvent(name: string, match: (data: Record<string, unknown>) => boolean = () => true, timeoutMs = 30_000): Promise<QmpEvent> {
    const test = (e: QmpEvent): boolean => e.event === name && match(e.data ?? {});
    const seen = this.events.find(test);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${name} event within ${timeoutMs} ms; got ${this.events.map((e) => e.event).join(', ')}`)), timeoutMs);
      this.#waiters.push({
        match: test,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  }

  /** Hangs up; resolves once the connection is closed both ways. */
  close(): Promise<void> {
    const socket = this.#socket;
    const closed = new Promise<void>((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve())));
    socket.end();
    return closed;
  }

  #receive(msg: Record<string, unknown>): void {
    if ('event' in msg) {
      const e = msg as unknown as QmpEvent;
      this.events.push(e);
      const [now, later] = partition(this.#waiters, (w) => w.match(e));
      this.#waiters = later;
      for (const w of now) w.resolve(e);
      return;
    }
    const id = msg.id;
    const pending = typeof id === 'number' ? this.#pending.get(id) : undefined;
    if (pending) {
      this.#pending.delete(id as number);
      pending(msg);
    } else {
      this.anonymous.push(msg);
    }
  }
}

function partition<T>(items: readonly T[], test: (t: T) => boolean): [T[], T[]] {
  const yes: T[] = [];
  const no: T[] = [];
  for (const t of items) (test(t) ? yes : no).push(t);
  return [yes, no];
}

import { unlink } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { ErrorCode, InvalidArgumentError, NbdError } from '../../errors.js';
import type { BlockDevice } from '../BlockDevice.js';
import type { ServedExport } from './NbdServerHandshake.js';
import { NbdServerSession, type SessionHost } from './NbdServerSession.js';
import { formatNbdUri, parseNbdUri, type NbdAddress } from './NbdUri.js';
import { NBD_MAX_STRING_BYTES } from './protocol.js';
import { someoneListens } from '../../util/unixSocket.js';

/** Default limit of requests one client may have in progress at once (nbdcopy sends up to 64). */
export const DEFAULT_MAX_REQUESTS_IN_FLIGHT = 64;
/** Default time a client may take to pick an export. */
export const DEFAULT_SERVER_HANDSHAKE_TIMEOUT_MS = 30_000;
/** Default limit of clients connected at once; more are refused (closed before the greeting). */
export const DEFAULT_MAX_CONNECTIONS = 128;
/**
 * Default limit of clients in the handshake at once. A new client past it makes the server drop
 * the one that has been in the handshake longest: real clients take milliseconds, so a flood of
 * silent connections can neither hold every slot nor keep real clients out.
 */
export const DEFAULT_MAX_HANDSHAKES = 16;
/**
 * Default bytes of request data the server holds for one client at once: write payloads received
 * and not yet written, read data not yet sent, and replies the client has not read. Past it, the
 * server reads no further requests from that client until some are done. Any single request
 * (at most 32 MiB) is always let in on its own.
 */
export const DEFAULT_MAX_CLIENT_BUFFER_BYTES = 64 << 20;
/** Bytes a client may send ahead of what the server has parsed before its socket is paused. */
export const CLIENT_READ_AHEAD_BYTES = 8 << 20;
/** The smallest buffer budget accepted: it must be well above the socket's own high-water mark. */
const MIN_CLIENT_BUFFER_BYTES = 1 << 20;

/** One export of an {@link NbdServer}. */
export interface NbdExportOptions {
  /** The name clients ask for (`nbd+unix:///NAME?socket=...`). */
  readonly name: string;
  /** What is served: any {@link BlockDevice} (a file, an NBD device, a mirror job's write interceptor). */
  readonly device: BlockDevice;
  /** Shown by `nbdinfo --list` and NBD_OPT_LIST. */
  readonly description?: string;
  /** Serve read-only even if the device is writable (a read-only device always is). */
  readonly readOnly?: boolean;
}

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  readonly exports: readonly NbdExportOptions[];
  /** The export the empty name selects (default: the only export, when there is exactly one). */
  readonly defaultExport?: string;
  /** Clients at once; more are refused: closed before the greeting, counted, reported (default 128; `Infinity`: no limit). */
  readonly maxConnections?: number;
  /** Clients in the handshake at once; a new one past it drops the oldest such client (default 16). */
  readonly maxHandshakes?: number;
  /** Requests one client may have in progress; further ones wait in the socket (default 64). */
  readonly maxRequestsInFlight?: number;
  /**
   * Bytes of write payloads, read data and unread replies held for one client; past it, its
   * further requests wait in the socket (default 64 MiB, at least 1 MiB).
   */
  readonly maxClientBufferBytes?: number;
  /** Milliseconds a client may take to choose an export before it is dropped (default 30 s). */
  readonly handshakeTimeoutMs?: number;
  /** Told about each client that broke the protocol or lost its connection mid-request (the server carries on). */
  readonly onClientError?: (err: Error) => void;
}

/**
 * An NBD server (fixed newstyle, structured replies, `base:allocation`) for one or more
 * {@link BlockDevice}s, on a Unix socket or TCP. Any number of clients at once, each with its own
 * {@link NbdServerSession}; a client that breaks the protocol loses its own connection only.
 * Every client's requests go to the same device object, so the export advertises multi-conn.
 *
 * ```ts
 * const server = new NbdServer({ exports: [{ name: 'disk', device }] });
 * const address = await server.listen('nbd+unix:///disk?socket=/run/disk.sock');
 * // ... nbdinfo, qemu-io, nbdcopy, a VM ...
 * await server.close();
 * ```
 */
export class NbdServer {
  readonly #exports = new Map<string, ServedExport>();
  readonly #defaultExport: string | undefined;
  readonly #options: NbdServerOptions;
  readonly #sessions = new Set<NbdServerSession>();
  /** Sessions still in the handshake, oldest first (a Set keeps insertion order). */
  readonly #handshaking = new Set<NbdServerSession>();
  #server: Server | undefined;
  #refused = 0;
  #dropped = 0;
  #address: NbdAddress | undefined;
  #shuttingDown = false;

  constructor(options: NbdServerOptions) {
    this.#options = options;
    for (const e of options.exports) this.addExport(e);
    this.#defaultExport = options.defaultExport ?? (options.exports.length === 1 ? options.exports[0]!.name : undefined);
  }

  /** Adds an export, also while the server listens (a daemon's block-export-add). */
  addExport(e: NbdExportOptions): void {
    if (Buffer.byteLength(e.name) > NBD_MAX_STRING_BYTES) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `export name '${e.name.slice(0, 40)}...' is longer than ${NBD_MAX_STRING_BYTES} bytes`);
    }
    if (e.description !== undefined && Buffer.byteLength(e.description) > NBD_MAX_STRING_BYTES) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `the description of export '${e.name.slice(0, 40)}' is longer than ${NBD_MAX_STRING_BYTES} bytes`);
    }
    if (this.#exports.has(e.name)) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `two exports are named '${e.name}'`);
    this.#exports.set(e.name, {
      name: e.name,
      description: e.description ?? '',
      device: e.device,
      readOnly: e.readOnly === true || e.device.readOnly,
    });
  }

  /** True when an export of that name exists. */
  hasExport(name: string): boolean {
    return this.#exports.has(name);
  }

  /** Clients in transmission on the named export. */
  clientsOf(name: string): number {
    let n = 0;
    for (const s of this.#sessions) if (s.exportName === name) n++;
    return n;
  }

  /**
   * Removes an export: new clients no longer find it, and its clients are stopped (the requests
   * in progress are answered first). Resolves once they are gone. The device stays open.
   */
  async removeExport(name: string): Promise<void> {
    if (!this.#exports.delete(name)) return;
    const sessions = [...this.#sessions].filter((s) => s.exportName === name);
    for (const s of sessions) s.stop();
    await Promise.all(sessions.map((s) => s.done));
  }

  /** Where the server listens (with the port TCP port 0 was given), once it does. */
  get address(): NbdAddress | undefined {
    return this.#address;
  }

  /** Clients connected now. */
  get clients(): number {
    return this.#sessions.size;
  }

  /** Clients in the handshake now. */
  get handshakingClients(): number {
    return this.#handshaking.size;
  }

  /** Clients refused since the server started, because `maxConnections` were connected. */
  get refusedClients(): number {
    return this.#refused;
  }

  /** Clients dropped in the handshake since the server started, to make room under `maxHandshakes`. */
  get droppedHandshakes(): number {
    return this.#dropped;
  }

  /** Bytes held for all clients now (unparsed input, request data in progress, unsent replies). */
  get bufferedBytes(): number {
    let n = 0;
    for (const s of this.#sessions) n += s.bufferedBytes;
    return n;
  }

  /**
   * Starts listening where an NBD URI says (its export name does not matter here):
   * `nbd+unix:///?socket=PATH`, or `nbd://HOST:PORT/` (TCP; no host means 127.0.0.1, port 0 a
   * free port). A stale Unix socket file nobody listens on is replaced. Resolves with the address
   * actually bound. Throws {@link NbdError} `BM_ERR_NBD_CONNECTION` when it cannot listen.
   */
  async listen(where: string | NbdAddress): Promise<NbdAddress> {
    if (this.#server) throw new NbdError(ErrorCode.NBD_CONNECTION, `this NBD server already listens on ${formatNbdUri(this.#address!)}`);
    const address = typeof where === 'string' ? parseNbdUri(where, { forListening: true }) : where;
    const server = createServer((socket) => this.#accept(socket));
    try {
      await listenOn(server, address);
    } catch (err) {
      if (address.transport !== 'unix' || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || (await someoneListens(address.socket))) {
        throw listenError(address, err);
      }
      await unlink(address.socket).catch(() => undefined);
      await listenOn(server, address).catch((again: unknown) => {
        throw listenError(address, again);
      });
    }
    this.#server = server;
    const bound = server.address();
    this.#address = address.transport === 'tcp' && bound && typeof bound === 'object' ? { ...address, port: (bound as AddressInfo).port } : address;
    return this.#address;
  }

  /**
   * Stops listening, lets each client's requests in progress finish and be answered, then
   * closes every connection. The devices stay open: they belong to the caller.
   */
  async close(): Promise<void> {
    this.#shuttingDown = true;
    const server = this.#server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const sessions = [...this.#sessions];
    for (const s of sessions) s.stop();
    await Promise.all([closed, ...sessions.map((s) => s.done)]);
    this.#server = undefined;
  }

  /** What a session asks of the server; `handshakeDone` takes it off the handshake list. */
  #host(handshakeDone: () => void): SessionHost {
    const server = this;
    const options = this.#options;
    return {
      findExport: (name) => this.#exports.get(name) ?? (name === '' && this.#defaultExport !== undefined ? this.#exports.get(this.#defaultExport) : undefined),
      listExports: () => [...this.#exports.values()],
      get shuttingDown(): boolean {
        return server.#shuttingDown;
      },
      maxRequestsInFlight: options.maxRequestsInFlight ?? DEFAULT_MAX_REQUESTS_IN_FLIGHT,
      maxBufferBytes: Math.max(MIN_CLIENT_BUFFER_BYTES, options.maxClientBufferBytes ?? DEFAULT_MAX_CLIENT_BUFFER_BYTES),
      readAheadBytes: CLIENT_READ_AHEAD_BYTES,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULT_SERVER_HANDSHAKE_TIMEOUT_MS,
      onClientError: (err) => options.onClientError?.(err),
      handshakeDone,
    };
  }

  #accept(socket: Socket): void {
    if (this.#shuttingDown) {
      socket.destroy();
      return;
    }
    const maxConnections = this.#options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    if (this.#sessions.size >= maxConnections) {
      this.#refused++;
      refuse(socket);
      this.#options.onClientError?.(new NbdError(ErrorCode.NBD_CONNECTION, `refused a client: ${maxConnections} clients are connected (maxConnections)`));
      return;
    }
    const maxHandshakes = Math.max(1, this.#options.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES);
    if (this.#handshaking.size >= maxHandshakes) {
      const oldest = this.#handshaking.values().next().value!;
      this.#handshaking.delete(oldest);
      this.#dropped++;
      oldest.stop();
      this.#options.onClientError?.(
        new NbdError(ErrorCode.NBD_CONNECTION, `dropped the client longest in the handshake: ${maxHandshakes} clients were in the handshake (maxHandshakes)`),
      );
    }
    // handshakeDone runs once the client has chosen an export, long after `session` is assigned.
    const session: NbdServerSession = new NbdServerSession(socket, this.#host(() => void this.#handshaking.delete(session)));
    this.#sessions.add(session);
    this.#handshaking.add(session);
    void session.done.finally(() => {
      this.#sessions.delete(session);
      this.#handshaking.delete(session);
    });
  }
}

/**
 * Closes a refused connection cleanly: an orderly end (FIN) rather than a reset, with what the
 * client already sent read and dropped (unread input would turn the close into a reset), and a
 * destroy after a while for a client that never closes its side.
 */
function refuse(socket: Socket): void {
  socket.on('error', () => {});
  socket.resume();
  socket.end();
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** Creates a server for one device, named after the URI's export name, and starts it listening there. */
export async function serveNbd(
  device: BlockDevice,
  uri: string,
  options: Omit<NbdServerOptions, 'exports'> & Pick<NbdExportOptions, 'description' | 'readOnly'> = {},
): Promise<{ server: NbdServer; address: NbdAddress; uri: string }> {
  const name = parseNbdUri(uri, { forListening: true }).exportName;
  const server = new NbdServer({ ...options, exports: [{ name, device, description: options.description, readOnly: options.readOnly }] });
  const address = await server.listen(uri);
  return { server, address, uri: formatNbdUri(address) };
}

function listenOn(server: Server, address: NbdAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = (): void => {
      server.off('error', reject);
      resolve();
    };
    if (address.transport === 'unix') server.listen(address.socket, done);
    else server.listen(address.port, address.host, done);
  });
}

function listenError(address: NbdAddress, err: unknown): NbdError {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  const where = address.transport === 'unix' ? address.socket : `${address.host}:${address.port}`;
  const why = code === 'EADDRINUSE' ? 'it is in use' : code;
  return new NbdError(ErrorCode.NBD_CONNECTION, `cannot serve NBD on ${where}: ${why}`, { cause: err });
}

import type { BlockDevice } from '../io/BlockDevice.js';
import { NbdServer } from '../io/nbd/NbdServer.js';
import type { BlockGraph, NodeParent, SocketAddress } from './BlockGraph.js';
import type { BlockNode } from './BlockNode.js';
import { QmpError } from './qmp/QmpError.js';
import { strerror } from './strerror.js';
import { nbdUriFor } from './BlockGraph.js';

/** The largest request an export advertises, whatever node it serves now or after a pivot. */
const EXPORT_MAX_REQUEST = 32 << 20;

/** One NBD export of a node (block-export-add). */
export interface BlockExport extends NodeParent {
  readonly id: string;
  readonly name: string;
  readonly writable: boolean;
  shuttingDown: boolean;
}

/**
 * Lets transactions stop new writes from outside for a moment (QEMU drains all I/O for one): writes
 * through exports enter and leave it; `quiesce` waits until none is in flight and holds new ones.
 */
export class WriteBarrier {
  #inFlight = 0;
  #idle: Array<() => void> = [];
  #held: Promise<void> | undefined;
  #release: (() => void) | undefined;

  async enter(): Promise<void> {
    while (this.#held) await this.#held;
    this.#inFlight++;
  }

  exit(): void {
    if (--this.#inFlight === 0) for (const w of this.#idle.splice(0)) w();
  }

  /** Holds new writes and resolves once none is in flight. */
  async quiesce(): Promise<void> {
    while (this.#held) await this.#held;
    this.#held = new Promise((resolve) => (this.#release = resolve));
    if (this.#inFlight > 0) await new Promise<void>((resolve) => this.#idle.push(resolve));
  }

  release(): void {
    const release = this.#release;
    this.#held = undefined;
    this.#release = undefined;
    release?.();
  }
}

/**
 * The daemon's NBD server (nbd-server-start) and its exports (block-export-add/del). An export
 * serves whatever node it points at when a request arrives, so it goes on serving across a
 * mirror's pivot, which re-points it at the target node.
 */
export class Exports {
  readonly #graph: BlockGraph;
  readonly #barrier: WriteBarrier;
  readonly #exports = new Map<string, BlockExport>();
  #server: NbdServer | undefined;
  #onDeleted: (id: string) => void;

  constructor(graph: BlockGraph, barrier: WriteBarrier, onDeleted: (id: string) => void) {
    this.#graph = graph;
    this.#barrier = barrier;
    this.#onDeleted = onDeleted;
  }

  get list(): readonly BlockExport[] {
    return [...this.#exports.values()];
  }

  get serverRunning(): boolean {
    return this.#server !== undefined;
  }

  async startServer(addr: SocketAddress, maxConnections: number | undefined): Promise<void> {
    if (this.#server) throw new QmpError('NBD server already running');
    // QEMU's max-connections 0 (its default) means no limit.
    const server = new NbdServer({ exports: [], maxConnections: maxConnections === 0 ? Number.POSITIVE_INFINITY : maxConnections });
    try {
      await server.listen(nbdUriFor(addr, ''));
    } catch (err) {
      throw new QmpError(`Failed to start the NBD server: ${strerror(err)}`);
    }
    this.#server = server;
  }

  /** nbd-server-stop: removes every NBD export, then stops listening. */
  async stopServer(): Promise<void> {
    const server = this.#server;
    if (!server) throw new QmpError('NBD server not running');
    for (const e of [...this.#exports.values()]) await this.#drop(e);
    this.#server = undefined;
    await server.close();
  }

  add(options: { id: string; node: BlockNode; name: string; writable: boolean; description?: string }): void {
    const server = this.#server;
    if (!server) throw new QmpError('NBD server not running');
    if (this.#exports.has(options.id)) throw new QmpError(`Block export id '${options.id}' is already in use`);
    if (server.hasExport(options.name)) throw new QmpError(`NBD server already has export named '${options.name}'`);
    if (options.writable && options.node.readOnly) throw new QmpError(`Cannot export node '${options.node.name}' writable: it is read-only`);
    const byReplica = options.node.chain().find((n) => n.replica !== undefined);
    if (byReplica) throw new QmpError(`Node '${byReplica.name}' is busy: it is in use by replica '${byReplica.replica}'`);
    if (options.node.targetOf) throw new QmpError(`Node '${options.node.name}' is busy: it is the target of block job '${options.node.targetOf}'`);
    const exp: BlockExport = { id: options.id, name: options.name, writable: options.writable, node: options.node, describe: `export '${options.id}'`, shuttingDown: false };
    server.addExport({ name: options.name, device: this.#deviceFor(exp), description: options.description, readOnly: !options.writable });
    this.#exports.set(exp.id, exp);
    this.#graph.addParent(exp);
  }

  /** block-export-del: `safe` refuses while clients are connected; `hard` disconnects them. */
  async delete(id: string, mode: 'safe' | 'hard'): Promise<void> {
    const exp = this.#exports.get(id);
    if (!exp) throw new QmpError(`Export '${id}' is not found`);
    if (exp.shuttingDown) throw new QmpError(`Export '${id}' is already shutting down`);
    if (mode === 'safe' && this.#server!.clientsOf(exp.name) > 0) throw new QmpError(`export '${id}' still in use`);
    await this.#drop(exp);
  }

  /** Removes every export and stops the server (the daemon is stopping). */
  async closeAll(): Promise<void> {
    if (this.#server) await this.stopServer();
  }

  async #drop(exp: BlockExport): Promise<void> {
    exp.shuttingDown = true;
    await this.#server!.removeExport(exp.name);
    this.#exports.delete(exp.id);
    this.#graph.removeParent(exp);
    this.#onDeleted(exp.id);
  }

  /** The device the NBD server serves: each request goes to the export's node of the moment. */
  #deviceFor(exp: BlockExport): BlockDevice {
    const barrier = this.#barrier;
    const leaf = exp.node.leaf().device!;
    const guarded = async (op: () => Promise<void>): Promise<void> => {
      await barrier.enter();
      try {
        await op();
      } finally {
        barrier.exit();
      }
    };
    return {
      description: `export '${exp.id}'`,
      get size() {
        return exp.node.size;
      },
      readOnly: !exp.writable,
      blockSize: leaf.blockSize,
      maxRequest: Math.min(leaf.maxRequest, EXPORT_MAX_REQUEST),
      efficientZeroes: false,
      read: (buf, offset) => exp.node.read(buf, offset),
      write: (data, offset) => guarded(() => exp.node.write(data, offset)),
      writeZeroes: (offset, length) => guarded(() => exp.node.writeZeroes(offset, length)),
      discard: (offset, length) => guarded(() => exp.node.discard(offset, length)),
      flush: () => exp.node.flush(),
      blockStatus: (offset, length) => exp.node.blockStatus(offset, length),
      allocBuffer: (size) => exp.node.leaf().device!.allocBuffer(size),
      close: async () => {},
    };
  }
}

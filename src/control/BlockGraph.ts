import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { FileDevice } from '../io/FileDevice.js';
import { NbdDevice } from '../io/nbd/NbdDevice.js';
import { formatNbdUri, type NbdAddress } from '../io/nbd/NbdUri.js';
import { BlockNode } from './BlockNode.js';
import type { BitmapStore } from './persistentBitmaps.js';
import { QmpError, nodeNotFound } from './qmp/QmpError.js';
import { isObject } from './qmp/schema.js';
import { strerror } from './strerror.js';

/** QEMU's limit on node names (BlockDriverState.node_name is 32 bytes with its NUL). */
const MAX_NODE_NAME = 31;

/** QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
export function wellFormedId(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

/** Something that uses a node from above: an export, or a raw node over it. */
export interface NodeParent {
  readonly describe: string;
  node: BlockNode;
}

/** A SocketAddress (QEMU's flat form: `type` next to the address fields). */
export type SocketAddress = { type: 'unix'; path: string } | { type: 'inet'; host: string; port: string };

/** Checked blockdev-add arguments (see commands/blockdev.ts for the schema). */
export interface BlockdevOptions {
  readonly driver: 'file' | 'raw' | 'nbd';
  readonly 'node-name'?: string;
  readonly 'read-only'?: boolean;
  readonly cache?: { direct?: boolean; 'no-flush'?: boolean };
  readonly filename?: string;
  readonly file?: string | BlockdevOptions;
  readonly server?: SocketAddress;
  readonly export?: string;
  readonly 'tls-creds'?: string;
}

/** The NBD URI a SocketAddress and export name stand for. */
export function nbdUriFor(server: SocketAddress, exportName: string): string {
  const address: NbdAddress =
    server.type === 'unix'
      ? { transport: 'unix', socket: server.path, exportName }
      : { transport: 'tcp', host: server.host, port: Number(server.port), exportName };
  return formatNbdUri(address);
}

/**
 * The daemon's block nodes by node-name, as QEMU's block graph: `file` and `nbd` nodes own a
 * device, `raw` nodes sit on a child. Also the parents of each node (exports, raw nodes), so a
 * node in use is not deleted and a completed mirror can re-point them at its target.
 */
export class BlockGraph {
  readonly #nodes = new Map<string, BlockNode>();
  readonly #parents = new Set<NodeParent>();
  /** Each raw node's link to its child (it is one of the parents). */
  readonly #rawLinks = new Map<BlockNode, NodeParent>();
  readonly #bitmaps: BitmapStore;
  #autoNames = 0;

  constructor(bitmaps: BitmapStore) {
    this.#bitmaps = bitmaps;
  }

  get nodes(): readonly BlockNode[] {
    return [...this.#nodes.values()];
  }

  find(name: string): BlockNode | undefined {
    return this.#nodes.get(name);
  }

  /** The node, or QEMU's "Cannot find device=... nor node-name=..." error. */
  get(name: string): BlockNode {
    const node = this.#nodes.get(name);
    if (!node) throw nodeNotFound(name);
    return node;
  }

  addParent(parent: NodeParent): void {
    this.#parents.add(parent);
  }

  removeParent(parent: NodeParent): void {
    this.#parents.delete(parent);
  }

  parentsOf(node: BlockNode): NodeParent[] {
    return [...this.#parents].filter((p) => p.node === node);
  }

  /**
   * A completed mirror's pivot, as QEMU's bdrv_replace_node: every parent of `from` (exports,
   * raw nodes) uses `to` from now on. `from` stays in the graph, unused.
   */
  replace(from: BlockNode, to: BlockNode): void {
    for (const p of this.parentsOf(from)) p.node = to;
  }

  /** Opens a node as blockdev-add describes it (arguments already checked) and adds it. */
  async add(options: BlockdevOptions, userCreated = true): Promise<BlockNode> {
    let name = options['node-name'];
    if (name === undefined) {
      if (userCreated) throw new QmpError("'node-name' must be specified for the root node");
      name = `#block${String(++this.#autoNames).padStart(3, '0')}`;
    } else {
      if (!wellFormedId(name)) throw new QmpError(`Invalid node-name: '${name}'`);
      if (name.length > MAX_NODE_NAME) throw new QmpError('Node name too long');
      if (this.#nodes.has(name)) throw new QmpError(`Duplicate nodes with node-name='${name}'`);
    }
    const node = await this.#open(name, options, userCreated);
    try {
      for (const b of await this.#bitmaps.load(node)) node.bitmaps.set(b.name, b);
    } catch (err) {
      await this.#close(node);
      throw err;
    }
    this.#nodes.set(name, node);
    return node;
  }

  /** blockdev-del: closes a node nobody uses (and its implied children), saving its bitmaps. */
  async delete(name: string): Promise<void> {
    const node = this.#nodes.get(name);
    if (!node) throw new QmpError(`Failed to find node with node-name='${name}'`);
    if (!node.userCreated) throw new QmpError(`Node ${name} is not owned by the monitor`);
    this.#assertUnused(node);
    await this.#remove(node);
  }

  /** Closes every node (the daemon is stopping): bitmaps saved clean, devices flushed and closed. */
  async closeAll(): Promise<void> {
    const errors: unknown[] = [];
    for (const node of [...this.#nodes.values()].reverse()) {
      await this.#saveBitmaps(node).catch((err: unknown) => errors.push(err));
      await this.#close(node).catch((err: unknown) => errors.push(err));
      this.#nodes.delete(node.name);
    }
    if (errors.length) throw errors[0];
  }

  #assertUnused(node: BlockNode): void {
    if (node.replica !== undefined) throw new QmpError(`Node ${node.name} is in use by replica '${node.replica}'`);
    if (node.job) throw new QmpError(`Node '${node.name}' is busy: block device is in use by block job: mirror`);
    if (node.targetOf) throw new QmpError(`Node ${node.name} is in use`);
    const parents = this.parentsOf(node);
    if (parents.length) throw new QmpError(`Node ${node.name} is in use by ${parents[0]!.describe}`);
  }

  async #remove(node: BlockNode): Promise<void> {
    const link = this.#rawLinks.get(node);
    if (link) this.#parents.delete(link);
    this.#rawLinks.delete(node);
    await this.#saveBitmaps(node);
    await this.#close(node);
    this.#nodes.delete(node.name);
    // An implied child (raw's inline file) goes with its parent once nobody else uses it.
    const child = node.child;
    if (child && !child.userCreated && this.parentsOf(child).length === 0 && !child.job && !child.targetOf) await this.#remove(child);
  }

  async #saveBitmaps(node: BlockNode): Promise<void> {
    for (const b of node.bitmaps.values()) if (b.persistent) await this.#bitmaps.saveClean(b);
  }

  async #close(node: BlockNode): Promise<void> {
    if (!node.device) return;
    if (!node.readOnly) await node.device.flush().catch(() => undefined);
    await node.device.close();
  }

  async #open(name: string, o: BlockdevOptions, userCreated: boolean): Promise<BlockNode> {
    const readOnly = o['read-only'] === true;
    const direct = o.cache?.direct === true;
    switch (o.driver) {
      case 'file': {
        const filename = o.filename!;
        const spec: DeviceSpec = { kind: 'file', path: filename, writable: !readOnly, direct, role: readOnly ? 'source' : 'target' };
        const device = await openOrExplain(() => FileDevice.open(spec), filename);
        return new BlockNode({ name, driver: 'file', device, spec, filename, readOnly, direct, userCreated });
      }
      case 'nbd': {
        if (o['tls-creds'] !== undefined) throw new QmpError('TLS is not supported by this daemon');
        const uri = nbdUriFor(o.server!, o.export ?? '');
        const spec: DeviceSpec = { kind: 'nbd', uri, writable: !readOnly, role: readOnly ? 'source' : 'target' };
        const device: BlockDevice = await openOrExplain(() => NbdDevice.open(spec), uri);
        return new BlockNode({ name, driver: 'nbd', device, spec, filename: uri, readOnly, direct: false, userCreated });
      }
      case 'raw': {
        const file = o.file!;
        const child = isObject(file) ? await this.add(file as BlockdevOptions, false) : this.get(file as string);
        if (child.replica !== undefined) throw new QmpError(`Node '${child.name}' is busy: it is in use by replica '${child.replica}'`);
        if (child.job || child.targetOf) throw new QmpError(`Node '${child.name}' is busy: block device is in use by block job: mirror`);
        const node = new BlockNode({ name, driver: 'raw', child, filename: child.filename, readOnly: readOnly || child.readOnly, direct: child.direct, userCreated });
        // The raw node is a parent of its child: the child cannot be deleted under it, and a pivot re-points it.
        const parent: NodeParent = {
          describe: `raw node '${name}'`,
          get node() {
            return node.child!;
          },
          set node(to: BlockNode) {
            node.child = to;
          },
        };
        this.#parents.add(parent);
        this.#rawLinks.set(node, parent);
        return node;
      }
    }
  }
}

async function openOrExplain<T>(open: () => Promise<T>, what: string): Promise<T> {
  try {
    return await open();
  } catch (err) {
    throw new QmpError(`Could not open '${what}': ${strerror(err)}`);
  }
}

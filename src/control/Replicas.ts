import { resolve } from 'node:path';
import type { ReplicaDurability } from '../replica/CheckpointBuffer.js';
import { Replica, type ReplicaCheckpoint, type FailoverResult } from '../replica/Replica.js';
import { statusToQmp } from '../replica/ReplicaControl.js';
import type { FailoverTarget } from '../replica/ReplicaStateFile.js';
import { wellFormedId, type BlockGraph } from './BlockGraph.js';
import type { BlockNode } from './BlockNode.js';
import { QmpError } from './qmp/QmpError.js';

/** Checked `x-blockmirror-replica-start` arguments. */
export interface ReplicaStartArgs {
  readonly 'node-name': string;
  readonly id: string;
  readonly export: string;
  readonly granularity?: number;
  readonly state?: string;
  readonly durability?: ReplicaDurability;
}

/** A replica the daemon runs over one of its file nodes. */
interface DaemonReplica {
  readonly id: string;
  readonly node: BlockNode;
  /** Undefined while it is starting. */
  replica: Replica | undefined;
}

/** A replica's failure as QMP's GenericError with its message (QEMU's way: no error code in the text). */
function asQmpError(err: unknown): QmpError {
  if (err instanceof QmpError) return err;
  return new QmpError(err instanceof Error ? err.message : String(err));
}

/**
 * The daemon's replicas (`x-blockmirror-replica-*`): the secondary of a continuous replication
 * ({@link Replica}) run over a `file` node's image. The replica opens the image itself and serves
 * its own NBD export; the node is marked busy ({@link BlockNode.replica}) for as long as it runs,
 * so nothing else in the daemon (export, job, raw node, bitmap, blockdev-del) writes or uses it.
 */
export class Replicas {
  readonly #graph: BlockGraph;
  readonly #replicas = new Map<string, DaemonReplica>();
  #closed = false;

  constructor(graph: BlockGraph) {
    this.#graph = graph;
  }

  async start(a: ReplicaStartArgs): Promise<void> {
    if (this.#closed) throw new QmpError('The daemon is shutting down');
    if (!wellFormedId(a.id)) throw new QmpError(`Invalid replica ID '${a.id}'`);
    if (this.#replicas.has(a.id)) throw new QmpError(`Replica ID '${a.id}' already in use`);
    const node = this.#graph.get(a['node-name']);
    if (node.driver !== 'file') throw new QmpError(`Node '${node.name}' is not a file node (a replica runs over a file node's image)`);
    if (node.readOnly) throw new QmpError(`Node '${node.name}' is read-only`);
    if (node.replica !== undefined) throw new QmpError(`Node '${node.name}' is busy: it is in use by replica '${node.replica}'`);
    if (node.job || node.targetOf) throw new QmpError(`Node '${node.name}' is busy: block device is in use by block job: mirror`);
    const parents = this.#graph.parentsOf(node);
    if (parents.length) throw new QmpError(`Node '${node.name}' is busy: it is in use by ${parents[0]!.describe}`);
    const same = [...this.#replicas.values()].find((e) => resolve(e.node.filename) === resolve(node.filename));
    if (same) throw new QmpError(`Replica '${same.id}' already runs over '${node.filename}' (node '${same.node.name}')`);
    if (node.bitmaps.size) throw new QmpError(`Node '${node.name}' has dirty bitmaps: the replica's writes would not mark them`);
    // Reserved before the first await: no export, job or second replica can take the node meanwhile.
    const entry: DaemonReplica = { id: a.id, node, replica: undefined };
    this.#replicas.set(a.id, entry);
    node.replica = a.id;
    try {
      // The daemon's flushed handle leaves nothing unwritten under the replica's own.
      await node.device!.flush();
      entry.replica = await Replica.start({
        disk: node.filename,
        export: a.export,
        granularity: a.granularity,
        stateDir: a.state,
        durability: a.durability,
      });
    } catch (err) {
      this.#replicas.delete(a.id);
      node.replica = undefined;
      throw asQmpError(err);
    }
    if (this.#closed) {
      // The daemon began stopping while this replica started: closeAll did not see it.
      await this.#close(entry).catch(() => {});
      throw new QmpError('The daemon is shutting down');
    }
  }

  async checkpoint(id: string, checkpointId?: number): Promise<ReplicaCheckpoint> {
    const r = this.#get(id);
    return r.checkpoint(checkpointId).catch((err: unknown) => Promise.reject(asQmpError(err)));
  }

  async failover(id: string, to: FailoverTarget): Promise<FailoverResult> {
    const r = this.#get(id);
    return r.failover(to).catch((err: unknown) => Promise.reject(asQmpError(err)));
  }

  /** Stops a replica (its export answers the requests in progress and closes; its files stay) and frees its node. */
  async stop(id: string): Promise<void> {
    const entry = this.#entry(id);
    if (!entry.replica) throw new QmpError(`Replica '${id}' is still starting`);
    await this.#close(entry);
  }

  list(): Array<Record<string, unknown>> {
    return [...this.#replicas.values()]
      .filter((e) => e.replica)
      .map((e) => ({ id: e.id, 'node-name': e.node.name, uri: e.replica!.uri, status: statusToQmp(e.replica!.status()) }));
  }

  /** Closes every replica (the daemon is stopping). */
  async closeAll(): Promise<void> {
    this.#closed = true;
    const errors: unknown[] = [];
    await Promise.all([...this.#replicas.values()].filter((e) => e.replica).map((e) => this.#close(e).catch((err: unknown) => errors.push(err))));
    if (errors.length) throw errors[0];
  }

  async #close(entry: DaemonReplica): Promise<void> {
    this.#replicas.delete(entry.id);
    try {
      await entry.replica!.close();
    } finally {
      entry.node.replica = undefined;
    }
  }

  #entry(id: string): DaemonReplica {
    const e = this.#replicas.get(id);
    if (!e) throw new QmpError(`Replica '${id}' not found`, 'DeviceNotFound');
    return e;
  }

  #get(id: string): Replica {
    const e = this.#entry(id);
    if (!e.replica) throw new QmpError(`Replica '${id}' is still starting`);
    return e.replica;
  }
}

import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import type { AllocationExtent, BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import type { MirrorJob } from '../job/MirrorJob.js';
import type { TrackedDevice } from '../job/TrackedDevice.js';
import type { PersistentBitmapFiles } from './PersistentBitmapFiles.js';

/** Block drivers the daemon knows (QEMU's names). */
export type NodeDriver = 'file' | 'raw' | 'nbd';

/** A dirty bitmap attached to a node (QEMU's BdrvDirtyBitmap, as far as QMP shows it). */
export interface NodeBitmap {
  readonly name: string;
  readonly bitmap: DirtyBitmap;
  /** Saved to `path` when the daemon stops or the node is deleted, and loaded when it is opened again. */
  readonly persistent: boolean;
  readonly path: string | undefined;
  /** A persistent bitmap's files: its bitmap file and the activity log every write marking it enters first. */
  readonly files: PersistentBitmapFiles | undefined;
  /** False while disabled: writes do not mark it. */
  recording: boolean;
  /** Loaded from a file that was in use when its writer stopped, without a log to vouch for it: all bits set, since some writes may be missing. */
  readonly inconsistent: boolean;
}

/** A running mirror job whose source is this node. */
export interface JobLink {
  readonly id: string;
  readonly job: MirrorJob;
  readonly target: BlockNode;
}

type Mutation = {
  /** The operation through the job's write interceptor. */
  viaJob(device: TrackedDevice): Promise<void>;
  /** The operation on the node below (raw's child) or the node's own device. */
  direct(io: NodeIo): Promise<void>;
};

/** What a node does with I/O: the same operations whether they go to a device or to a child node. */
export interface NodeIo {
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(data: Uint8Array, offset: number): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

/**
 * A node of the daemon's block graph: a `file` or `nbd` node owns an open device; a `raw` node
 * passes everything to its `file` child node.
 *
 * The node's write path is the point every write from outside (an NBD export) goes through, and it
 * keeps three promises:
 * - while a mirror job copies this node, the write goes through the job's write interceptor, so
 *   the job sees it (marks it dirty, or writes it to the target too in write-blocking mode);
 * - before the write is let through, it has entered the activity log of every persistent
 *   bitmap it will mark, and waited for the log's record where its extent was not hot yet; after
 *   the write has completed (also after a failed one), it marks the recording dirty bitmaps of
 *   every node it reached (this node and the nodes below it), then exits those logs. So a crash
 *   at any point leaves the write's range in the bitmap file or in the log;
 * - once the job has pivoted, the write reaches the target node, and the target's bitmaps are
 *   marked instead. A write that was already in flight at the pivot may have gone to either side
 *   (the interceptor decides when it gets past the job's writer gate), so it marks both: a bitmap
 *   errs on the side of dirty. The graph then re-points the node's parents (exports, raw nodes) at
 *   the target, as QEMU's mirror completion replaces the source node.
 */
export class BlockNode implements NodeIo {
  readonly name: string;
  readonly driver: NodeDriver;
  /** raw: the node below (re-pointed at a mirror's target when a job on it completes). */
  child: BlockNode | undefined;
  /** file, nbd: the open device. */
  readonly device: BlockDevice | undefined;
  /** file, nbd: how a worker thread opens its own handle. */
  readonly spec: DeviceSpec | undefined;
  /** What the node is an image of: a file's path, an export's URI. */
  readonly filename: string;
  readonly readOnly: boolean;
  readonly direct: boolean;
  /** Added by the user (blockdev-add, --blockdev) rather than implied by a parent's definition. */
  readonly userCreated: boolean;
  readonly bitmaps = new Map<string, NodeBitmap>();
  /** The mirror job copying this node, while there is one. */
  job: JobLink | undefined;
  /** Id of the mirror job writing to this node, while there is one. */
  targetOf: string | undefined;
  /** Id of the replica running over this node's image, while there is one (the node is busy: nothing else may use it). */
  replica: string | undefined;

  constructor(init: {
    name: string;
    driver: NodeDriver;
    child?: BlockNode;
    device?: BlockDevice;
    spec?: DeviceSpec;
    filename: string;
    readOnly: boolean;
    direct: boolean;
    userCreated: boolean;
  }) {
    this.name = init.name;
    this.driver = init.driver;
    this.child = init.child;
    this.device = init.device;
    this.spec = init.spec;
    this.filename = init.filename;
    this.readOnly = init.readOnly;
    this.direct = init.direct;
    this.userCreated = init.userCreated;
  }

  get size(): number {
    return this.leaf().device!.size;
  }

  /** The node at the bottom (the one with a device). */
  leaf(): BlockNode {
    return this.child ? this.child.leaf() : this;
  }

  /** This node and every node below it. */
  chain(): BlockNode[] {
    return this.child ? [this, ...this.child.chain()] : [this];
  }

  /** Marks the recording bitmaps of this node only. */
  markOwn(offset: number, length: number): void {
    for (const b of this.bitmaps.values()) if (b.recording) b.bitmap.mark(offset, length);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const link = this.job;
    if (link) return link.job.device.readInto(buf, offset);
    return this.#below().read(buf, offset);
  }

  write(data: Uint8Array, offset: number): Promise<void> {
    return this.#mutate(offset, data.length, { viaJob: (d) => d.write(data, offset), direct: (io) => io.write(data, offset) });
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#mutate(offset, length, { viaJob: (d) => d.writeZeroes(offset, length), direct: (io) => io.writeZeroes(offset, length) });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#mutate(offset, length, { viaJob: (d) => d.discard(offset, length), direct: (io) => io.discard(offset, length) });
  }

  async flush(): Promise<void> {
    const link = this.job;
    if (link) return link.job.device.flush();
    return this.#below().flush();
  }

  /** Allocation status from the device at the bottom (the target's once pivoted). */
  async blockStatus(offset: number, length: number): Promise<readonly AllocationExtent[]> {
    const link = this.job;
    const leaf = (link && link.job.device.pivoted ? link.target : this).leaf().device!;
    if (leaf.blockStatus) return leaf.blockStatus(offset, length);
    return [{ length: Math.max(length, 1), hole: false, zero: false }];
  }

  #below(): NodeIo {
    return this.child ?? this.device!;
  }

  async #mutate(offset: number, length: number, op: Mutation): Promise<void> {
    const link = this.job;
    if (!link) {
      const logs = this.bitmaps.size ? enterLogs([this], offset, length) : undefined;
      try {
        if (logs?.durable) await logs.durable;
        await op.direct(this.#below());
      } finally {
        // After the write, as the job's interceptor does (invariant 1 of docs/architecture.md); a failed write may
        // have changed part of the range, so it marks too. The child marked its own bitmaps.
        this.markOwn(offset, length);
        if (logs) for (const f of logs.files) f.exit(offset, length);
      }
      return;
    }
    const before = link.job.device.pivoted;
    // The write may reach the target whatever `before` says (the pivot may come while it waits), so it enters the target's logs too.
    const logs = enterLogs(before ? link.target.chain() : [...this.chain(), ...link.target.chain()], offset, length);
    try {
      if (logs?.durable) await logs.durable;
      await op.viaJob(link.job.device);
    } finally {
      const after = link.job.device.pivoted;
      // The interceptor wrote the job's devices directly: mark every node each side's chain holds.
      if (!before) for (const n of this.chain()) n.markOwn(offset, length);
      if (after) for (const n of link.target.chain()) n.markOwn(offset, length);
      if (logs) for (const f of logs.files) f.exit(offset, length);
    }
  }
}

/** The activity logs a write entered, and what to wait for before letting it through (none when every extent was hot). */
interface EnteredLogs {
  readonly files: readonly PersistentBitmapFiles[];
  readonly durable: Promise<unknown> | undefined;
}

/**
 * Enters the log of every persistent, recording bitmap of `nodes` for a write (a bitmap starts
 * recording only while no write is in flight: see Bitmaps), or undefined when there is none.
 */
function enterLogs(nodes: readonly BlockNode[], offset: number, length: number): EnteredLogs | undefined {
  let files: PersistentBitmapFiles[] | undefined;
  let waits: Promise<void>[] | undefined;
  for (const n of nodes) {
    for (const b of n.bitmaps.values()) {
      if (!b.recording || !b.files) continue;
      const wait = b.files.enter(offset, length);
      (files ??= []).push(b.files);
      if (wait) (waits ??= []).push(wait);
    }
  }
  if (!files) return undefined;
  return { files, durable: waits && (waits.length === 1 ? waits[0] : Promise.all(waits)) };
}

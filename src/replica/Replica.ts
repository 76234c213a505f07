import { mkdir, unlink } from 'node:fs/promises';
import { QmpServer } from '../control/qmp/QmpServer.js';
import { ErrorCode, InvalidArgumentError, JobError, StateError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { deviceSpecFor } from '../io/location.js';
import { serveNbd, type NbdServer } from '../io/nbd/NbdServer.js';
import { formatNbdUri } from '../io/nbd/NbdUri.js';
import { openDevice } from '../io/openDevice.js';
import { currentOwner, ownerIsAlive } from '../state/JobStateFile.js';
import { checkGranularity, REPLICA_DURABILITIES, type CheckpointBuffer, type ReplicaDurability } from './CheckpointBuffer.js';
import { DrillView } from './DrillView.js';
import { REPLICA_QMP_VERSION, ReplicaControl } from './ReplicaControl.js';
import { ReplicaDevice } from './ReplicaDevice.js';
import { openReplicaState, removeBufferFiles } from './openReplicaState.js';
import { replicaFilesFor, type ReplicaFiles } from './replicaFiles.js';
import {
  readReplicaState,
  untrustedCheckpoint,
  writeReplicaState,
  type FailoverTarget,
  type ReplicaCheckpointRecord,
  type ReplicaState,
  type ReplicaStateRecord,
} from './ReplicaStateFile.js';

/** Options of {@link Replica.start}. */
export interface ReplicaOptions {
  /** The replica disk: a raw file or block device (or an NBD URI, with `stateDir`). */
  readonly disk: string;
  /** Where the primary's writes arrive: an NBD URI to listen on (`nbd+unix:///NAME?socket=PATH`, `nbd://HOST:PORT/NAME`). */
  readonly export: string;
  /** The control socket: a Unix socket path where a QMP-shaped monitor listens (mode 0600). None: drive it through the methods. */
  readonly control?: string;
  /** Bytes per granule of the checkpoint buffer, for a new replica (default 64 KiB); an existing one keeps its own. */
  readonly granularity?: number;
  /** Where the buffer, log and state live (default: next to the disk). */
  readonly stateDir?: string;
  /**
   * What a save into the checkpoint buffer survives before the write over it goes (default
   * `power`): `power` fdatasyncs the buffer and the log record on the write path (survives a
   * power loss); `process` only writes them, in the same order (survives `kill -9`, not a power
   * loss: after a reboot failover to the checkpoint is refused until the next checkpoint).
   * Checkpoints and failovers sync in both modes. Any run may pick either.
   */
  readonly durability?: ReplicaDurability;
  /** Told about checkpoints, failovers and drills as they happen. */
  readonly onEvent?: (name: ReplicaEventName, data: Record<string, unknown>) => void;
}

/** Events {@link ReplicaOptions.onEvent} hears. */
export type ReplicaEventName = 'checkpoint' | 'failover' | 'drill-started' | 'drill-stopped';

/** A checkpoint as the primary named it. */
export interface ReplicaCheckpoint {
  /** The primary's id; null before the first checkpoint (the disk as it was when the replica first started). */
  readonly id: number | null;
  /** ISO time it was taken. */
  readonly time: string;
}

/** What {@link Replica.status} says. */
export interface ReplicaStatus {
  readonly state: ReplicaState;
  readonly checkpoint: ReplicaCheckpoint;
  /** False when the buffer cannot be vouched for ({@link untrustedReason}): failover to the checkpoint is refused until the next checkpoint. */
  readonly checkpointTrusted: boolean;
  /** Why the checkpoint is not trusted, when it is not. */
  readonly untrustedReason: string | undefined;
  /** This run's durability mode. */
  readonly durability: ReplicaDurability;
  /** Bytes of old contents the buffer holds (0 once failed over). */
  readonly bufferBytes: number;
  readonly savedGranules: number;
  readonly granularity: number;
  readonly size: number;
  /** Writes (write, write-zeroes, discard requests) since the last checkpoint, counted by this process. */
  readonly writesSinceCheckpoint: number;
  readonly bytesSinceCheckpoint: number;
  /** Seconds since the last checkpoint. */
  readonly lag: number;
  /** The drill running, if any. */
  readonly drill: DrillStatus | undefined;
  /** Where the last failover put the disk, once failed over. */
  readonly failover: { readonly to: FailoverTarget; readonly time: string; readonly restoredBytes: number } | undefined;
}

/** A running failover drill. */
export interface DrillStatus {
  readonly uri: string;
  readonly started: string;
  readonly writtenBytes: number;
  /** Bytes replication changed since the drill started (kept in its snapshot). */
  readonly snapshotBytes: number;
}

/** What {@link Replica.failover} did. */
export interface FailoverResult {
  readonly to: FailoverTarget;
  /** The checkpoint the disk is back at (to `checkpoint`), or the last one (to `latest`). */
  readonly checkpoint: ReplicaCheckpoint;
  readonly restoredGranules: number;
  readonly restoredBytes: number;
}

/**
 * The secondary of a continuous replication: an NBD export that the primary's writes land on,
 * with copy-before-write into a crash-safe checkpoint buffer ({@link CheckpointBuffer}), and the
 * verbs the primary (or an operator) drives it with: {@link checkpoint}, {@link failover},
 * {@link drillStart} / {@link drillStop}, {@link status}. Verbs run one at a time.
 *
 * Files (next to the disk, or in `stateDir`): `DISK.replica-state`, `DISK.replica-buffer`,
 * `DISK.replica-log`; a restart (after a crash too) carries on from them.
 */
export class Replica {
  readonly files: ReplicaFiles;
  readonly disk: string;
  readonly granularity: number;
  readonly durability: ReplicaDurability;
  readonly #diskDevice: BlockDevice;
  readonly #device: ReplicaDevice;
  readonly #onEvent: ReplicaOptions['onEvent'];
  #buffer: CheckpointBuffer | undefined;
  #record: ReplicaStateRecord;
  #server: NbdServer | undefined;
  #control: QmpServer | undefined;
  #uri = '';
  #drill: { view: DrillView; server: NbdServer; uri: string } | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closing: Promise<void> | undefined;

  private constructor(o: ReplicaOptions, files: ReplicaFiles, disk: BlockDevice, buffer: CheckpointBuffer | undefined, record: ReplicaStateRecord) {
    this.files = files;
    this.disk = o.disk;
    this.granularity = record.granularity;
    this.durability = o.durability ?? 'power';
    this.#diskDevice = disk;
    this.#buffer = buffer;
    this.#record = record;
    this.#device = new ReplicaDevice(disk, buffer);
    this.#onEvent = o.onEvent;
  }

  /**
   * Opens the disk and its buffer (recovering them after a restart), then serves the export.
   * Refuses a replica another live process runs (`BM_ERR_STATE_IN_USE`), a disk of another size
   * (`BM_ERR_STATE_MISMATCH`), another granularity than the replica's (`BM_ERR_INVALID_OPTION`),
   * and state that does not fit together (`BM_ERR_STATE_*`, `BM_ERR_LOG_*`).
   */
  static async start(o: ReplicaOptions): Promise<Replica> {
    const files = replicaFilesFor(o.disk, o.stateDir);
    if (o.stateDir !== undefined) await mkdir(o.stateDir, { recursive: true });
    if (o.granularity !== undefined) checkGranularity(o.granularity);
    if (o.durability !== undefined && !REPLICA_DURABILITIES.includes(o.durability)) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `durability must be ${REPLICA_DURABILITIES.join(' or ')}, not ${JSON.stringify(o.durability)}`);
    }
    const found = await readReplicaState(files.state);
    if (found && (await ownerIsAlive(found.owner))) {
      throw new StateError(ErrorCode.STATE_IN_USE, `${files.state}: process ${found.owner.pid} runs this replica`, 'stop that process first');
    }
    const disk = await openDevice(deviceSpecFor(o.disk, { role: 'target', writable: true }));
    try {
      const { buffer, record } = await openReplicaState(o, files, disk, found);
      await Promise.all([unlink(files.drillSnapshot).catch(() => {}), unlink(files.drillOverlay).catch(() => {})]);
      const replica = new Replica(o, files, disk, buffer, record);
      try {
        await replica.#writeState({ ...record, owner: await currentOwner() });
        const served = await serveNbd(replica.#device, o.export, { description: `blockmirror replica of ${o.disk}` });
        replica.#server = served.server;
        replica.#uri = served.uri;
        if (o.control !== undefined) replica.#control = await QmpServer.listen(o.control, new ReplicaControl(replica), REPLICA_QMP_VERSION);
      } catch (err) {
        await replica.#server?.close().catch(() => {});
        await replica.#buffer?.close().catch(() => {});
        throw err;
      }
      return replica;
    } catch (err) {
      await disk.close().catch(() => {});
      throw err;
    }
  }

  /** The export's URI (with the port TCP port 0 became). */
  get uri(): string {
    return this.#uri;
  }

  get state(): ReplicaState {
    return this.#record.state;
  }

  /** The device the export serves (for tests and embedding: writes through it get copy-before-write). */
  get device(): ReplicaDevice {
    return this.#device;
  }

  status(): ReplicaStatus {
    const c = this.#record.checkpoint;
    const drill = this.#drill;
    const untrusted = untrustedCheckpoint(this.#record);
    return {
      state: this.#record.state,
      checkpoint: { id: c.id, time: c.time },
      checkpointTrusted: untrusted === undefined,
      untrustedReason: untrusted?.reason,
      durability: this.durability,
      bufferBytes: this.#buffer?.bufferBytes ?? 0,
      savedGranules: this.#buffer?.savedGranules ?? 0,
      granularity: this.granularity,
      size: this.#diskDevice.size,
      writesSinceCheckpoint: this.#device.counts.writes,
      bytesSinceCheckpoint: this.#device.counts.bytes,
      lag: Math.max(0, (Date.now() - Date.parse(c.time)) / 1000),
      drill: drill && {
        uri: drill.uri,
        started: drill.view.startedAt.toISOString(),
        writtenBytes: drill.view.writtenBytes,
        snapshotBytes: drill.view.snapshotGranules * this.granularity,
      },
      failover: this.#record.failover,
    };
  }

  /**
   * The disk as it is now is the new consistent point (the primary has no write in flight):
   * writes are held, the disk fdatasync'ed, the buffer dropped. `id` defaults to the last id + 1.
   * A buffer that could not be vouched for is trusted again from here on: the new interval starts
   * empty from a disk fdatasync'ed at the checkpoint.
   */
  checkpoint(id?: number): Promise<ReplicaCheckpoint> {
    return this.#serial(async () => {
      const buffer = this.#replicating('checkpoint');
      const next: ReplicaCheckpointRecord = { interval: buffer.interval + 1, id: id ?? (this.#record.checkpoint.id ?? 0) + 1, time: new Date().toISOString() };
      await this.#device.exclusive(async () => {
        // The state file names the checkpoint before the log's reset commits it: after a crash either interval has its name.
        await buffer.checkpoint(next.interval, () => this.#writeState({ ...this.#record, pending: next }));
        this.#device.resetCounts();
      });
      this.#record = { ...this.#record, checkpoint: next, pending: undefined, untrusted: undefined };
      // Tidying only: recovery takes `pending` as current once the log holds its interval.
      await this.#writeState(this.#record).catch(() => {});
      const result = { id: next.id, time: next.time };
      this.#onEvent?.('checkpoint', result);
      return result;
    });
  }

  /**
   * Makes the disk a primary. To `checkpoint`: every saved granule is put back, so the disk is
   * exactly as of the last checkpoint; to `latest`: the disk keeps every write received. Either
   * way the disk is fdatasync'ed, the state file says `failed-over` (the commit point), the buffer
   * and log are removed, and the export passes reads and writes straight through from then on. A
   * running drill is stopped first. Interrupted by a crash before the commit, it can be run again.
   * To `checkpoint` is refused (`BM_ERR_STATE_MISMATCH`) while the buffer cannot be vouched for
   * (a `process`-mode replica restarted on another boot), until the next checkpoint.
   */
  failover(to: FailoverTarget): Promise<FailoverResult> {
    return this.#serial(async () => {
      const buffer = this.#replicating('failover');
      const untrusted = untrustedCheckpoint(this.#record);
      if (to === 'checkpoint' && untrusted) {
        throw new StateError(
          ErrorCode.STATE_MISMATCH,
          `failover to 'checkpoint' refused: the checkpoint buffer cannot be vouched for since ${untrusted.since} (${untrusted.reason})`,
          "fail over to 'latest', or take a checkpoint first (the buffer is trusted again from it on)",
        );
      }
      await this.#stopDrill();
      const restoredBytes = to === 'checkpoint' ? buffer.bufferBytes : 0;
      const failedOver: ReplicaStateRecord = {
        ...this.#record,
        state: 'failed-over',
        pending: undefined,
        untrusted: undefined,
        failover: { to, time: new Date().toISOString(), restoredBytes },
      };
      let restoredGranules = 0;
      await this.#device.exclusive(async () => {
        const commit = (): Promise<void> => this.#writeState(failedOver);
        if (to === 'checkpoint') restoredGranules = (await buffer.restore(commit)).granules;
        else await buffer.checkpoint(buffer.interval + 1, commit);
        this.#device.passThrough();
      });
      this.#record = failedOver;
      this.#buffer = undefined;
      await buffer.close().catch(() => {});
      await removeBufferFiles(this.files);
      const c = this.#record.checkpoint;
      const result: FailoverResult = { to, checkpoint: { id: c.id, time: c.time }, restoredGranules, restoredBytes };
      this.#onEvent?.('failover', { ...result });
      return result;
    });
  }

  /**
   * Starts a failover drill: a read-write NBD view of the disk as of now (its own snapshot and an
   * overlay, thrown away by {@link drillStop}) while replication goes on. Served at `uri`
   * (default `nbd+unix:///drill?socket=DISK.replica-drill.sock`). One drill at a time.
   */
  drillStart(uri?: string): Promise<{ uri: string; started: string }> {
    return this.#serial(async () => {
      this.#replicating('drill-start');
      if (this.#drill) throw new JobError(ErrorCode.JOB_STATE, `a drill is running already (at ${this.#drill.uri}): stop it first`);
      const view = await DrillView.create(this.#diskDevice, this.granularity, { snapshotPath: this.files.drillSnapshot, overlayPath: this.files.drillOverlay });
      // No write in flight may miss the snapshot's copy-before-write: "as of now" is this point.
      await this.#device.exclusive(async () => this.#device.setObserver(view));
      try {
        const served = await serveNbd(view, uri ?? formatNbdUri({ transport: 'unix', socket: this.files.drillSocket, exportName: 'drill' }), { description: `failover drill of ${this.disk}` });
        this.#drill = { view, server: served.server, uri: served.uri };
      } catch (err) {
        await this.#device.exclusive(async () => this.#device.setObserver(undefined));
        await view.close();
        throw err;
      }
      const result = { uri: this.#drill.uri, started: view.startedAt.toISOString() };
      this.#onEvent?.('drill-started', result);
      return result;
    });
  }

  /** Ends the drill: its export closed (requests in progress answered), its snapshot and overlay removed. */
  drillStop(): Promise<{ writtenBytes: number; seconds: number }> {
    return this.#serial(async () => {
      if (!this.#drill) throw new JobError(ErrorCode.JOB_STATE, 'no drill is running');
      const result = await this.#stopDrill();
      return result!;
    });
  }

  /** The control socket's path, if it has one. */
  get control(): string | undefined {
    return this.#control?.path;
  }

  /**
   * Stops taking commands, stops serving (requests in progress answered), ends any drill, flushes
   * and closes everything; the files stay for a restart. Safe to call twice.
   */
  close(): Promise<void> {
    // Set first, so that no verb starts once closing has begun; the control socket goes before
    // the queue is joined, so a client waiting on a queued verb is not what holds the close up.
    this.#closing ??= (async () => {
      await this.#control?.close();
      await this.#serial(() => this.#closeNow());
    })();
    return this.#closing;
  }

  async #closeNow(): Promise<void> {
    await this.#server?.close();
    await this.#stopDrill();
    await this.#diskDevice.flush().catch(() => {});
    await this.#buffer?.close();
    await this.#diskDevice.close();
  }

  async #stopDrill(): Promise<{ writtenBytes: number; seconds: number } | undefined> {
    const drill = this.#drill;
    if (!drill) return undefined;
    this.#drill = undefined;
    await drill.server.close();
    await this.#device.exclusive(async () => this.#device.setObserver(undefined));
    await drill.view.close();
    const result = { writtenBytes: drill.view.writtenBytes, seconds: (Date.now() - drill.view.startedAt.getTime()) / 1000 };
    this.#onEvent?.('drill-stopped', { uri: drill.uri, ...result });
    return result;
  }

  /** The buffer, when the replica still replicates; a verb that needs it is refused once failed over. */
  #replicating(verb: string): CheckpointBuffer {
    if (this.#closing) throw new JobError(ErrorCode.JOB_STATE, `${verb}: the replica is stopping`);
    if (!this.#buffer || this.#record.state !== 'replicating') {
      throw new JobError(ErrorCode.JOB_STATE, `${verb}: the replica has failed over (to ${this.#record.failover?.to ?? 'latest'}): its disk is a primary now`);
    }
    return this.#buffer;
  }

  async #writeState(record: ReplicaStateRecord): Promise<void> {
    await writeReplicaState(this.files.state, { ...record, updated: new Date().toISOString() });
    this.#record = record;
  }

  #serial<T>(body: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(body);
    this.#queue = run.catch(() => {});
    return run;
  }
}

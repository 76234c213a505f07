import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { ErrorCode, InvalidArgumentError, JobError, type IoError } from '../errors.js';
import { NbdDevice } from '../io/nbd/NbdDevice.js';
import { QmpClient } from '../control/qmp/QmpClient.js';
import type { MirrorJob } from '../job/MirrorJob.js';
import { resumeMirror } from '../job/resumeMirror.js';
import { startMirror } from '../job/startMirror.js';
import type { CopyMode } from '../job/TrackedDevice.js';
import { atConsistentPoint } from '../job/transactions.js';
import { readJobState } from '../state/JobStateFile.js';
import { LatencyWindow } from '../sched/LatencyWindow.js';
import { SecondaryDevice } from './SecondaryDevice.js';

/** Backoff of reconnection attempts: from this... */
export const RECONNECT_MIN_MS = 100;
/** ...doubling up to this. */
export const RECONNECT_MAX_MS = 5000;
/** A checkpoint whose targets do not take their backlog within this long fails (ms). */
export const DEFAULT_CHECKPOINT_TIMEOUT_MS = 5000;
/** How often the replication looks at its jobs (state, lag bound, resync). */
const WATCH_MS = 100;

/** One replicated disk: a source on this host, its secondary's export and control socket. */
export interface ReplicationDisk {
  /** The primary's image (opened read-write: the application writes through the job). */
  readonly source: string;
  /** The secondary's NBD export (`blockmirror replica DISK --export URI`). */
  readonly secondary: string;
  /** The secondary's control socket (`--control PATH`). */
  readonly control: string;
  /** A state directory: what could not be sent survives a crash of the primary (resumed if it holds the job). */
  readonly state?: string;
}

/** Options of {@link Replication.start}. */
export interface ReplicationOptions {
  readonly disks: readonly ReplicationDisk[];
  /** Milliseconds between automatic checkpoints (0 or undefined: on command only). */
  readonly checkpointInterval?: number;
  /** `write-blocking` (default: a write is acknowledged once on both sides) or `background`. */
  readonly copyMode?: CopyMode;
  /** In background mode: a backlog larger than this (bytes) switches a disk to write-blocking. */
  readonly maxLag?: number;
  readonly checkpointTimeout?: number;
  /** Copy worker threads of each job (default: the mirror's). */
  readonly workers?: number;
}

/** Where a replication is: the initial sync (or a resync), in sync, a secondary unreachable, or stopped. */
export type ReplicationState = 'syncing' | 'replicating' | 'disconnected' | 'stopped';

/** A checkpoint that completed on every secondary. */
export interface CheckpointResult {
  readonly id: number;
  /** From the request to the last secondary's answer, ms. */
  readonly ms: number;
  readonly time: string;
}

/** What {@link Replication.status} says. */
export interface ReplicationStatus {
  readonly state: ReplicationState;
  readonly checkpoint: { readonly id: number; readonly time: string | null };
  /** Seconds since the last checkpoint (null: none yet). */
  readonly secondsSinceCheckpoint: number | null;
  /** Checkpoint durations, ms. */
  readonly checkpointMs: { readonly count: number; readonly p50: number | null; readonly p99: number | null };
  readonly disks: ReadonlyArray<{
    readonly source: string;
    readonly secondary: string;
    readonly connected: boolean;
    readonly jobStatus: string;
    readonly copyMode: CopyMode;
    /** Bytes the secondary lacks (dirty or in flight). */
    readonly lagBytes: number;
    readonly reconnects: number;
    /** Bytes copied since the last reconnection until in sync again. */
    readonly lastResyncBytes: number | null;
  }>;
}

/** Events of a {@link Replication}. */
export interface ReplicationEvents {
  state: [{ state: ReplicationState; previous: ReplicationState }];
  /**
   * A checkpoint's instant: every disk's writers are held, and every write acknowledged before
   * is on the secondaries, flushed. Listeners run synchronously, writers still held: the moment
   * to note what was acknowledged (a test's shadow, an application's own marker).
   */
  'checkpoint-begin': [{ id: number }];
  checkpoint: [CheckpointResult];
  'checkpoint-failed': [{ id: number; message: string }];
  disconnected: [{ disk: number; secondary: string; message: string }];
  reconnected: [{ disk: number; secondary: string; attempts: number }];
  /** A disk is in sync again after an outage: how much was sent again. */
  resynced: [{ disk: number; bytes: number; seconds: number }];
}

/** A disk's parts while replicating. */
class DiskLink {
  readonly nbd: NbdDevice;
  readonly link: SecondaryDevice;
  job!: MirrorJob;
  control: QmpClient | undefined;
  reconnects = 0;
  /** Bytes copied when the link came back, until in sync again. */
  resyncFrom: { copied: number; at: number } | undefined;
  lastResyncBytes: number | null = null;
  reconnecting = false;

  constructor(
    readonly index: number,
    readonly disk: ReplicationDisk,
    nbd: NbdDevice,
    hooks: { onDown: (err: IoError) => void },
  ) {
    this.nbd = nbd;
    this.link = new SecondaryDevice(nbd, { onDown: hooks.onDown, onLost: (ranges) => this.#lost(ranges) });
  }

  /** Ranges the secondary may have lost: copied again. */
  #lost(ranges: readonly number[]): void {
    for (let i = 0; i < ranges.length; i += 2) this.job?.markDirty(ranges[i]!, ranges[i + 1]!);
  }

  async controlClient(): Promise<QmpClient> {
    if (!this.control || this.control.closed) this.control = await QmpClient.connect(this.disk.control);
    return this.control;
  }
}

/**
 * Continuous replication to secondaries (`blockmirror replica`), as QEMU's block replication for
 * COLO: each disk is a mirror job whose target is its secondary's export, in write-blocking mode by
 * default (a write is acknowledged once both sides have it), that never completes. A checkpoint
 * holds every disk's writers at one instant, copies what is left, flushes every secondary, tells
 * each to checkpoint, and lets the writers go: every secondary then holds its disk as of that
 * instant, and can fail over to it.
 *
 * When a secondary cannot be reached, its disk goes on serving writers; what it misses is tracked
 * in the job's bitmap (crash-safe with a state directory), with what it may have lost unflushed.
 * The link is tried again with backoff; once back, only that is sent, and checkpoints resume.
 */
export class Replication extends EventEmitter<ReplicationEvents> {
  readonly #disks: DiskLink[];
  readonly #o: ReplicationOptions;
  #state: ReplicationState = 'syncing';
  #checkpointId = 0;
  #checkpointTime: { iso: string; at: number } | undefined;
  #checkpointing: Promise<CheckpointResult> | undefined;
  /** Checkpoint durations (µs), for the status's percentiles. */
  readonly #durations = new LatencyWindow();
  #watch: NodeJS.Timeout | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  private constructor(disks: DiskLink[], options: ReplicationOptions) {
    super();
    this.#disks = disks;
    this.#o = options;
  }

  /** Connects to every secondary and starts each disk's initial sync. */
  static async start(options: ReplicationOptions): Promise<Replication> {
    if (!Array.isArray(options.disks) || options.disks.length === 0) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, 'a replication needs at least one disk');
    const interval = options.checkpointInterval ?? 0;
    if (!(interval === 0 || interval >= 10)) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `checkpointInterval must be 0 or at least 10 ms, not ${interval}`);
    const links: DiskLink[] = [];
    let replication: Replication | undefined;
    try {
      for (const [i, disk] of options.disks.entries()) {
        const nbd = await NbdDevice.open({ kind: 'nbd', uri: disk.secondary, role: 'target', writable: true });
        links.push(new DiskLink(i, disk, nbd, { onDown: (err) => replication && replication.#down(links[i]!, err) }));
      }
      replication = new Replication(links, options);
      for (const l of links) l.job = await replication.#startJob(l);
    } catch (err) {
      await Promise.all(links.map(async (l) => {
        await l.job?.cancel({ force: true }).catch(() => undefined);
        await l.job?.close().catch(() => undefined);
        await l.nbd.close();
      }));
      throw err;
    }
    replication.#begin();
    return replication;
  }

  /** Each disk's mirror job (`job.device` is where the application writes; serve it to export the disk). */
  get jobs(): readonly MirrorJob[] {
    return this.#disks.map((d) => d.job);
  }

  get state(): ReplicationState {
    return this.#state;
  }

  /**
   * A checkpoint now: rejects with `BM_ERR_JOB_STATE` unless replicating (every disk in sync, every
   * secondary reachable). Checkpoints run one at a time; a request during one waits for the next.
   */
  async checkpoint(): Promise<CheckpointResult> {
    while (this.#checkpointing) await this.#checkpointing.catch(() => undefined);
    if (this.#state !== 'replicating') throw new JobError(ErrorCode.JOB_STATE, `cannot checkpoint while ${this.#state}`);
    this.#checkpointing = this.#runCheckpoint();
    try {
      return await this.#checkpointing;
    } finally {
      this.#checkpointing = undefined;
    }
  }

  status(): ReplicationStatus {
    const d = this.#durations.total();
    const ms = (micros: number): number | null => (d.count > 0 ? micros / 1000 : null);
    return {
      state: this.#state,
      checkpoint: { id: this.#checkpointId, time: this.#checkpointTime?.iso ?? null },
      secondsSinceCheckpoint: this.#checkpointTime ? (performance.now() - this.#checkpointTime.at) / 1000 : null,
      checkpointMs: { count: d.count, p50: ms(d.p50), p99: ms(d.p99) },
      disks: this.#disks.map((d) => {
        const p = d.job.progress();
        return {
          source: d.disk.source,
          secondary: d.disk.secondary,
          connected: d.link.isUp,
          jobStatus: d.job.status,
          copyMode: d.job.copyMode,
          lagBytes: p.dirtyBytes + p.inFlightBytes,
          reconnects: d.reconnects,
          lastResyncBytes: d.lastResyncBytes,
        };
      }),
    };
  }

  /**
   * Stops replicating: disks in sync are cancelled to a consistent copy (writers held, the rest
   * sent), the others at once; the connections close. The secondaries keep their last checkpoint.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#watch);
    clearInterval(this.#timer);
    await this.#checkpointing?.catch(() => undefined);
    for (const d of this.#disks) {
      const j = d.job;
      if (j.status === 'ready' && d.link.isUp) await j.cancel().catch(() => j.cancel({ force: true }).catch(() => undefined));
      else if (j.status !== 'null' && j.status !== 'concluded') await j.cancel({ force: true }).catch(() => undefined);
      await j.close().catch(() => undefined);
      await d.control?.close().catch(() => undefined);
      await d.nbd.close().catch(() => undefined);
    }
    this.#setState('stopped');
  }

  async #startJob(d: DiskLink): Promise<MirrorJob> {
    const common = {
      targetDevice: d.link,
      copyMode: this.#o.copyMode ?? 'write-blocking',
      // A secondary that fails a write is retried once the link is back, never a failed job.
      onTargetError: 'ignore' as const,
      workers: this.#o.workers,
    };
    const state = d.disk.state;
    if (state !== undefined && (await readJobState(state).then(() => true, () => false))) {
      return resumeMirror({ state, source: d.disk.source, target: d.disk.secondary, ...common });
    }
    return startMirror({ source: d.disk.source, target: d.disk.secondary, ...(state !== undefined ? { state } : {}), ...common });
  }

  #begin(): void {
    for (const d of this.#disks) {
      d.job.on('status-change', () => this.#evaluate());
      d.job.on('error', () => undefined); // target failures are the link's to report; the job retries them
    }
    this.#watch = setInterval(() => this.#tick(), WATCH_MS).unref();
    const interval = this.#o.checkpointInterval ?? 0;
    if (interval > 0) {
      this.#timer = setInterval(() => {
        if (this.#state === 'replicating' && !this.#checkpointing) this.checkpoint().catch(() => undefined);
      }, interval).unref();
    }
    this.#evaluate();
  }

  async #runCheckpoint(): Promise<CheckpointResult> {
    const id = this.#checkpointId + 1;
    const started = performance.now();
    try {
      await atConsistentPoint(
        this.jobs,
        async () => {
          this.emit('checkpoint-begin', { id });
          // Every secondary has every write before this instant; its checkpoint makes them durable
          // (it fdatasyncs its disk first, so no NBD flush is needed before) and drops its buffer.
          await Promise.all(
            this.#disks.map(async (d) => {
              await (await d.controlClient()).execute('checkpoint', { id });
              d.link.durable();
            }),
          );
        },
        this.#o.checkpointTimeout ?? DEFAULT_CHECKPOINT_TIMEOUT_MS,
        { flush: false },
      );
    } catch (err) {
      this.emit('checkpoint-failed', { id, message: (err as Error).message });
      throw err;
    }
    const ms = performance.now() - started;
    this.#checkpointId = id;
    this.#checkpointTime = { iso: new Date().toISOString(), at: performance.now() };
    this.#durations.record(ms * 1000);
    const result = { id, ms, time: this.#checkpointTime.iso };
    this.emit('checkpoint', result);
    return result;
  }

  /** A link failed: the disk goes on without its secondary, and tries it again with backoff. */
  #down(d: DiskLink, err: IoError): void {
    if (this.#stopped) return;
    this.emit('disconnected', { disk: d.index, secondary: d.disk.secondary, message: err.message });
    this.#evaluate();
    if (d.reconnecting) return;
    d.reconnecting = true;
    void this.#reconnect(d).finally(() => (d.reconnecting = false));
  }

  async #reconnect(d: DiskLink): Promise<void> {
    // The copier stops; writers go on, their ranges marked (a write-blocking write's target half fails at once).
    if (d.job && !d.job.paused && (d.job.status === 'running' || d.job.status === 'ready')) await d.job.pause().catch(() => undefined);
    let wait = RECONNECT_MIN_MS;
    for (let attempt = 1; !this.#stopped; attempt++) {
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(RECONNECT_MAX_MS, wait * 2);
      try {
        await d.link.restore(() => d.nbd.reconnect());
      } catch {
        continue;
      }
      await d.control?.close().catch(() => undefined);
      d.control = undefined;
      d.reconnects++;
      d.resyncFrom = { copied: d.job.progress().bytesCopied, at: performance.now() };
      if (d.job.paused) d.job.resume();
      this.emit('reconnected', { disk: d.index, secondary: d.disk.secondary, attempts: attempt });
      this.#evaluate();
      return;
    }
  }

  #tick(): void {
    for (const d of this.#disks) {
      const p = d.job.progress();
      if (d.resyncFrom && d.link.isUp && p.synced) {
        const bytes = p.bytesCopied - d.resyncFrom.copied;
        d.lastResyncBytes = bytes;
        this.emit('resynced', { disk: d.index, bytes, seconds: (performance.now() - d.resyncFrom.at) / 1000 });
        d.resyncFrom = undefined;
      }
      const maxLag = this.#o.maxLag;
      if (maxLag !== undefined && d.job.copyMode === 'background' && d.job.status === 'ready' && p.dirtyBytes + p.inFlightBytes > maxLag) {
        d.job.changeCopyMode('write-blocking').catch(() => undefined);
      }
    }
    this.#evaluate();
  }

  #evaluate(): void {
    if (this.#stopped) return;
    let next: ReplicationState = 'replicating';
    if (this.#disks.some((d) => !d.link.isUp)) next = 'disconnected';
    else if (this.#disks.some((d) => d.job.status !== 'ready' || d.resyncFrom !== undefined)) next = 'syncing';
    this.#setState(next);
  }

  #setState(next: ReplicationState): void {
    const previous = this.#state;
    if (previous === next) return;
    this.#state = next;
    this.emit('state', { state: next, previous });
  }
}

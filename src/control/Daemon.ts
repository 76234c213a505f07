import { Bitmaps } from './Bitmaps.js';
import { BlockGraph } from './BlockGraph.js';
import { bitmapCommands } from './commands/bitmaps.js';
import { blockdevCommands } from './commands/blockdev.js';
import type { QmpCommand } from './commands/command.js';
import { exportCommands, type ExportArgs } from './commands/exports.js';
import { jobCommands } from './commands/jobs.js';
import { miscCommands } from './commands/misc.js';
import { replicaCommands } from './commands/replicas.js';
import { transactionCommands } from './commands/transaction.js';
import { Exports, WriteBarrier } from './Exports.js';
import { Jobs } from './Jobs.js';
import { BitmapStore } from './persistentBitmaps.js';
import { Replicas } from './Replicas.js';
import { QmpError } from './qmp/QmpError.js';
import { QmpServer, type QmpDispatcher, type QmpLimits, type QmpSession, type QmpVersion } from './qmp/QmpServer.js';
import { check, type InputMode } from './qmp/schema.js';

/**
 * The QEMU version whose QMP mirror interface the daemon speaks (block-job-change and
 * actively-synced came in 8.2). The package names what really answers.
 */
export const QMP_VERSION: QmpVersion = { qemu: { major: 8, minor: 2, micro: 0 }, package: 'blockmirror 0.1.0' };

export interface DaemonOptions {
  /** Where persistent bitmaps are saved (default: next to each image). */
  readonly bitmapDir?: string;
  /** Milliseconds between checkpoints of a persistent bitmap while it changes (default 2000). */
  readonly bitmapCheckpointIntervalMs?: number;
  /** Where the daemon tells its operator what happened to persistent bitmaps after a crash (default: process warnings). */
  readonly notice?: (message: string) => void;
  readonly version?: QmpVersion;
  /** Limits on what each QMP client may make the daemon hold (default: qmp/QmpServer.ts's DEFAULT_QMP_LIMITS). */
  readonly qmpLimits?: Partial<QmpLimits>;
}

const COMMANDS: readonly QmpCommand[] = [
  ...blockdevCommands,
  ...jobCommands,
  ...bitmapCommands,
  ...exportCommands,
  ...transactionCommands,
  ...replicaCommands,
  ...miscCommands,
];

/**
 * blockmirror's QMP daemon, driven the way qemu-storage-daemon is: a block graph of nodes, NBD
 * exports of them, mirror jobs between them, dirty bitmaps on them, and QMP monitors that run
 * commands and hear events. `shutdown` (quit, SIGTERM) cancels the jobs, closes the exports and
 * replicas, saves persistent bitmaps clean and closes the nodes.
 */
export class Daemon implements QmpDispatcher {
  readonly version: QmpVersion;
  readonly barrier = new WriteBarrier();
  readonly graph: BlockGraph;
  readonly bitmaps: Bitmaps;
  readonly exports: Exports;
  readonly jobs: Jobs;
  /** Replicas over file nodes (x-blockmirror-replica-*). */
  readonly replicas: Replicas;
  /** Resolves with why the daemon stopped, once it has. */
  readonly stopped: Promise<string>;
  readonly #commands = new Map(COMMANDS.map((c) => [c.name, c]));
  readonly #monitors: QmpServer[] = [];
  readonly #qmpLimits: Partial<QmpLimits>;
  #stopping: Promise<void> | undefined;
  #stoppedWith!: (reason: string) => void;

  constructor(options: DaemonOptions = {}) {
    this.version = options.version ?? QMP_VERSION;
    this.#qmpLimits = options.qmpLimits ?? {};
    const store = new BitmapStore(options.bitmapDir, { checkpointIntervalMs: options.bitmapCheckpointIntervalMs, notice: options.notice });
    this.graph = new BlockGraph(store);
    this.bitmaps = new Bitmaps(this.graph, store, this.barrier);
    this.exports = new Exports(this.graph, this.barrier, (id) => this.emit('BLOCK_EXPORT_DELETED', { id }));
    this.jobs = new Jobs(this.graph, (name, data) => this.emit(name, data));
    this.replicas = new Replicas(this.graph);
    this.stopped = new Promise((resolve) => (this.#stoppedWith = resolve));
  }

  get commandNames(): string[] {
    return ['qmp_capabilities', ...this.#commands.keys()];
  }

  get stopping(): boolean {
    return this.#stopping !== undefined;
  }

  /** Starts a QMP monitor on a Unix socket, with the daemon's QMP limits. */
  async listenQmp(path: string): Promise<QmpServer> {
    const monitor = await QmpServer.listen(path, this, this.version, this.#qmpLimits);
    this.#monitors.push(monitor);
    return monitor;
  }

  /** Sends an event to every negotiated QMP client. */
  emit(name: string, data: Record<string, unknown>): void {
    for (const m of this.#monitors) m.broadcast(name, data);
  }

  dispatch(name: string, args: Record<string, unknown> | undefined, session: QmpSession): Promise<unknown> {
    return this.execute(name, args, session);
  }

  /**
   * Runs a command with unchecked arguments: checked against its schema first (in `keyval` mode,
   * for command-line options, scalars arrive as strings).
   */
  async execute(name: string, args: Record<string, unknown> | undefined, session?: QmpSession, mode: InputMode = 'json'): Promise<unknown> {
    const cmd = this.#commands.get(name);
    if (!cmd) throw new QmpError(`The command ${name} has not been found`, 'CommandNotFound');
    if (this.#stopping && name !== 'query-version') throw new QmpError('The daemon is shutting down');
    let checked: unknown = {};
    if (cmd.args) checked = check(cmd.args, args ?? {}, '', mode);
    else if (args && Object.keys(args).length) throw new QmpError(`Parameter '${Object.keys(args)[0]}' is unexpected`);
    return (await cmd.run(checked, { daemon: this, session })) ?? {};
  }

  /** block-export-add (and --export). */
  addExport(a: ExportArgs): void {
    this.exports.add({ id: a.id, node: this.graph.get(a['node-name']), name: a.name ?? a['node-name'], writable: a.writable === true, description: a.description });
  }

  /**
   * Stops the daemon: every job is cancelled (as QEMU's quit does; the events still go out),
   * exports answer the requests in progress and close, persistent bitmaps are saved clean once no
   * write can reach them, nodes are flushed and closed, monitors close. Safe to call twice.
   */
  shutdown(reason: string): Promise<void> {
    this.#stopping ??= this.#shutdown(reason);
    return this.#stopping;
  }

  async #shutdown(reason: string): Promise<void> {
    const errors: unknown[] = [];
    const step = async (fn: () => Promise<void>): Promise<void> => {
      await fn().catch((err: unknown) => errors.push(err));
    };
    await step(() => this.jobs.cancelEverything());
    await step(() => this.exports.closeAll());
    await step(() => this.replicas.closeAll());
    await step(() => this.graph.closeAll());
    await Promise.all(this.#monitors.map((m) => m.close()));
    this.#stoppedWith(errors.length ? `${reason}, with errors: ${errors.map(String).join('; ')}` : reason);
    if (errors.length) throw errors[0];
  }
}

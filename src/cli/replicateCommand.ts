import type { Command } from 'commander';
import { serveNbd, type NbdServer } from '../io/nbd/NbdServer.js';
import { parseNbdUri } from '../io/nbd/NbdUri.js';
import { QmpServer } from '../control/qmp/QmpServer.js';
import { Replication, type ReplicationEvents } from '../replication/Replication.js';
import { REPLICATION_QMP_VERSION, ReplicationControl } from '../replication/ReplicationControl.js';
import type { CopyMode } from '../job/TrackedDevice.js';
import { formatBytes } from '../util/size.js';
import { choiceOption, integerOption, sizeOption } from './options.js';
import { ErrorCode, InvalidArgumentError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { parseKeyval } from '../control/qmp/keyval.js';
import { emitEvent } from './output.js';
import { untilSignal } from './untilSignal.js';

/** Options of `blockmirror replicate`, as commander parses them. */
interface ReplicateCommandOptions {
  control?: string;
  disk: DiskOption[];
  export?: string;
  monitor?: string;
  checkpointInterval: number;
  copyMode: CopyMode;
  maxLag?: number;
  state?: string;
  json: boolean;
}

export function registerReplicateCommand(program: Command): void {
  program
    .command('replicate')
    .description('replicate an image continuously to a secondary (blockmirror replica), with checkpoints it can fail over to; until SIGINT or SIGTERM')
    .argument('[source]', 'raw image file or block device (opened read-write; write to it through --export)')
    .argument('[secondary]', "the secondary's NBD export (blockmirror replica DISK --export URI)")
    .option('--control <socket>', "the secondary's control socket (blockmirror replica --control PATH)")
    .option(
      '--disk <keyval>',
      'one more disk in the same checkpoints: source=PATH,secondary=URI,control=SOCKET[,export=URI][,state=DIR] (repeatable; every checkpoint is one instant across all disks)',
      collectDisk,
      [] as DiskOption[],
    )
    .option('--export <uri>', 'serve the source over NBD, every write replicated: nbd+unix:///NAME?socket=PATH, or nbd://127.0.0.1:PORT/NAME')
    .option('--monitor <socket>', 'a QMP-shaped control socket for this side: checkpoint, query-replication')
    .option('--checkpoint-interval <ms>', 'a checkpoint every MS once in sync (0: on command only)', integerOption('--checkpoint-interval', 0, 3_600_000), 0)
    .addOption(
      choiceOption(
        '--copy-mode <mode>',
        'write-blocking: a write is acknowledged once the secondary has it too; background: writes are sent behind (bound the lag with --max-lag)',
        ['write-blocking', 'background'],
        'write-blocking',
      ),
    )
    .option('--max-lag <size>', 'in background mode: a backlog larger than this switches to write-blocking', sizeOption('--max-lag'))
    .option('--state <dir>', 'keep what the secondary lacks crash-safe in DIR (resumed from it if it holds the job)')
    .option('--json', 'NDJSON events on stdout', false)
    .action(async (source: string | undefined, secondary: string | undefined, opts: ReplicateCommandOptions) => {
      await runReplicate(disksOf(source, secondary, opts), opts);
    });
}

/** One disk of the replication, from the arguments or a `--disk`. */
interface DiskOption {
  readonly source: string;
  readonly secondary: string;
  readonly control: string;
  readonly export?: string;
  readonly state?: string;
}

const DISK_KEYS = ['source', 'secondary', 'control', 'export', 'state'];

function usage(message: string): InvalidArgumentError {
  return new InvalidArgumentError(ErrorCode.INVALID_OPTION, message);
}

/** Parses one `--disk` (QEMU's keyval syntax: `,,` is a comma in a value). */
function collectDisk(text: string, previous: DiskOption[]): DiskOption[] {
  let parsed: Record<string, unknown>;
  try {
    parsed = parseKeyval(text);
  } catch (err) {
    throw usage(`--disk ${text}: ${(err as Error).message}`);
  }
  const unknown = Object.keys(parsed).find((k) => !DISK_KEYS.includes(k));
  if (unknown !== undefined) throw usage(`--disk: unknown key '${unknown}' (keys: ${DISK_KEYS.join(', ')})`);
  for (const k of ['source', 'secondary', 'control']) {
    if (typeof parsed[k] !== 'string' || parsed[k] === '') throw usage(`--disk needs ${k}=...: ${text}`);
  }
  if (parsed.export !== undefined) parseNbdUri(String(parsed.export), { forListening: true });
  return [...previous, parsed as unknown as DiskOption];
}

/** The disks: the positional pair (with --control, --export and --state) first, then each --disk. */
function disksOf(source: string | undefined, secondary: string | undefined, opts: ReplicateCommandOptions): DiskOption[] {
  const disks: DiskOption[] = [];
  if (source !== undefined || secondary !== undefined) {
    if (source === undefined || secondary === undefined) throw usage('replicate needs a SOURCE and a SECONDARY (or --disk)');
    if (opts.control === undefined) throw usage('replicate SOURCE SECONDARY needs --control SOCKET (the secondary\'s control socket)');
    if (opts.export !== undefined) parseNbdUri(opts.export, { forListening: true });
    disks.push({ source, secondary, control: opts.control, ...(opts.export !== undefined ? { export: opts.export } : {}), ...(opts.state !== undefined ? { state: opts.state } : {}) });
  } else if (opts.control !== undefined || opts.export !== undefined || opts.state !== undefined) {
    throw usage('--control, --export and --state go with SOURCE SECONDARY; with --disk, give them as its keys');
  }
  disks.push(...opts.disk);
  if (disks.length === 0) throw usage('replicate needs a SOURCE and a SECONDARY, or --disk');
  return disks;
}

async function runReplicate(disks: readonly DiskOption[], opts: ReplicateCommandOptions): Promise<void> {
  const say = (line: string): void => {
    if (!opts.json) process.stderr.write(`blockmirror replicate: ${line}\n`);
  };
  const replication = await Replication.start({
    disks: disks.map((d) => ({ source: d.source, secondary: d.secondary, control: d.control, ...(d.state !== undefined ? { state: d.state } : {}) })),
    checkpointInterval: opts.checkpointInterval,
    copyMode: opts.copyMode,
    maxLag: opts.maxLag,
  });
  const forward = <K extends keyof ReplicationEvents>(name: K, text: (e: ReplicationEvents[K][0]) => string): void => {
    replication.on(name, ((e: ReplicationEvents[K][0]) => {
      if (opts.json) emitEvent(name, { time: new Date().toISOString(), ...e });
      else say(text(e));
    }) as never);
  };
  forward('state', (e) => `${e.state}`);
  forward('checkpoint', (e) => `checkpoint ${e.id} in ${e.ms.toFixed(1)} ms`);
  forward('checkpoint-failed', (e) => `checkpoint ${e.id} failed: ${e.message}`);
  forward('disconnected', (e) => `the secondary is unreachable (${e.message}); writes go on and are tracked`);
  forward('reconnected', (e) => `the secondary is back after ${e.attempts} attempts: sending what it missed`);
  forward('resynced', (e) => `in sync again: ${formatBytes(e.bytes)} sent again in ${e.seconds.toFixed(1)} s`);
  const exports: Array<{ disk: number; server: NbdServer; uri: string; view: BlockDevice }> = [];
  let monitor: QmpServer | undefined;
  try {
    for (const [i, d] of disks.entries()) {
      const job = replication.jobs[i]!;
      if (d.export === undefined) continue;
      const view = job.device.asBlockDevice();
      const served = await serveNbd(view, d.export, { description: view.description });
      exports.push({ disk: i, ...served, view });
      if (!opts.json) process.stdout.write(`serving ${d.source} (${formatBytes(job.size)}, replicated to ${d.secondary}) at ${served.uri}\n`);
    }
    if (opts.monitor !== undefined) monitor = await QmpServer.listen(opts.monitor, new ReplicationControl(replication), REPLICATION_QMP_VERSION);
    if (opts.json) {
      emitEvent('start', {
        disks: disks.map((d, i) => ({ source: d.source, secondary: d.secondary, size: replication.jobs[i]!.size, export: exports.find((e) => e.disk === i)?.uri ?? null })),
        monitor: opts.monitor ?? null,
        copyMode: opts.copyMode,
        checkpointInterval: opts.checkpointInterval,
      });
    }
    say(`replicating ${disks.map((d) => `${d.source} to ${d.secondary}`).join(', ')}: the initial sync first`);
    const signal = await untilSignal();
    say(`${signal}: stopping`);
    for (const e of exports) {
      await e.server.close();
      await e.view.flush().catch(() => undefined);
    }
  } finally {
    await monitor?.close();
    await replication.stop();
  }
  if (opts.json) emitEvent('stopped', replication.status() as unknown as Record<string, unknown>);
}

import type { Command } from 'commander';
import { serveNbd, type NbdServer } from '../io/nbd/NbdServer.js';
import { parseNbdUri } from '../io/nbd/NbdUri.js';
import { QmpServer } from '../control/qmp/QmpServer.js';
import { Replication, type ReplicationEvents } from '../replication/Replication.js';
import { REPLICATION_QMP_VERSION, ReplicationControl } from '../replication/ReplicationControl.js';
import type { CopyMode } from '../job/TrackedDevice.js';
import { formatBytes } from '../util/size.js';
import { choiceOption, integerOption, sizeOption } from './options.js';
import { emitEvent } from './output.js';
import { untilSignal } from './untilSignal.js';

/** Options of `blockmirror replicate`, as commander parses them. */
interface ReplicateCommandOptions {
  control: string;
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
    .argument('<source>', 'raw image file or block device (opened read-write; write to it through --export)')
    .argument('<secondary>', "the secondary's NBD export (blockmirror replica DISK --export URI)")
    .requiredOption('--control <socket>', "the secondary's control socket (blockmirror replica --control PATH)")
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
    .action(async (source: string, secondary: string, opts: ReplicateCommandOptions) => {
      await runReplicate(source, secondary, opts);
    });
}

async function runReplicate(source: string, secondary: string, opts: ReplicateCommandOptions): Promise<void> {
  if (opts.export !== undefined) parseNbdUri(opts.export, { forListening: true });
  const say = (line: string): void => {
    if (!opts.json) process.stderr.write(`blockmirror replicate: ${line}\n`);
  };
  const replication = await Replication.start({
    disks: [{ source, secondary, control: opts.control, ...(opts.state !== undefined ? { state: opts.state } : {}) }],
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
  const job = replication.jobs[0]!;
  let exported: { server: NbdServer; uri: string } | undefined;
  let monitor: QmpServer | undefined;
  try {
    const view = job.device.asBlockDevice();
    if (opts.export !== undefined) exported = await serveNbd(view, opts.export, { description: view.description });
    if (opts.monitor !== undefined) monitor = await QmpServer.listen(opts.monitor, new ReplicationControl(replication), REPLICATION_QMP_VERSION);
    if (opts.json) emitEvent('start', { source, secondary, size: job.size, export: exported?.uri ?? null, monitor: opts.monitor ?? null, copyMode: opts.copyMode, checkpointInterval: opts.checkpointInterval });
    else if (exported) process.stdout.write(`serving ${source} (${formatBytes(job.size)}, replicated to ${secondary}) at ${exported.uri}\n`);
    say(`replicating ${source} to ${secondary} (${formatBytes(job.size)}): the initial sync first`);
    const signal = await untilSignal();
    say(`${signal}: stopping`);
    await exported?.server.close();
    await view.flush().catch(() => undefined);
  } finally {
    await monitor?.close();
    await replication.stop();
  }
  if (opts.json) emitEvent('stopped', replication.status() as unknown as Record<string, unknown>);
}

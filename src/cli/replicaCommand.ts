import type { Command } from 'commander';
import { REPLICA_DURABILITIES, type ReplicaDurability } from '../replica/CheckpointBuffer.js';
import { Replica, type ReplicaEventName } from '../replica/Replica.js';
import { formatBytes } from '../util/size.js';
import { choiceOption, sizeOption } from './options.js';
import { emitEvent } from './output.js';
import { untilSignal } from './untilSignal.js';

/** Options of `blockmirror replica`, as commander parses them. */
interface ReplicaCommandOptions {
  export: string;
  control: string;
  granularity?: number;
  state?: string;
  durability: ReplicaDurability;
  json: boolean;
}

export function registerReplicaCommand(program: Command): void {
  program
    .command('replica')
    .description('the secondary of a continuous replication: a writable NBD export for the primary, with checkpoints, failover and drills on a control socket')
    .argument('<disk>', 'raw image file or block device that the primary replicates to')
    .requiredOption('--export <uri>', 'where the primary writes: nbd+unix:///NAME?socket=PATH, or nbd://127.0.0.1:PORT/NAME (port 0: any free port)')
    .requiredOption('--control <socket>', 'QMP-shaped control socket (Unix socket, mode 0600): checkpoint, failover, query-replica, drill-start, drill-stop')
    .option('--granularity <size>', 'bytes per granule of the checkpoint buffer, a power of two from 4K to 64M (default 64K; a restarted replica keeps its own)', sizeOption('--granularity'))
    .option('--state <dir>', 'where the buffer, log and state files live (default: next to the disk)')
    .addOption(
      choiceOption(
        '--durability <mode>',
        "what the write path's saves into the checkpoint buffer survive: power (fdatasync'ed, survive a power loss) or process (written only, survive kill -9; after a reboot failover to the checkpoint is refused until the next checkpoint)",
        REPLICA_DURABILITIES,
        'power',
      ),
    )
    .option('--json', 'NDJSON events on stdout', false)
    .action(async (disk: string, opts: ReplicaCommandOptions) => {
      await runReplica(disk, opts);
    });
}

async function runReplica(disk: string, opts: ReplicaCommandOptions): Promise<void> {
  const onEvent = (name: ReplicaEventName, data: Record<string, unknown>): void => {
    if (opts.json) emitEvent(name, data);
    else process.stderr.write(`blockmirror replica: ${name} ${JSON.stringify(data)}\n`);
  };
  const replica = await Replica.start({ disk, export: opts.export, control: opts.control, granularity: opts.granularity, stateDir: opts.state, durability: opts.durability, onEvent });
  try {
    const s = replica.status();
    const checkpoint = `${s.checkpoint.id === null ? 'no checkpoint yet' : `checkpoint ${s.checkpoint.id}`}${s.checkpointTrusted ? '' : ' (not trusted: failover to it refused until the next checkpoint)'}`;
    if (opts.json) {
      emitEvent('listening', { disk, uri: replica.uri, control: replica.control, size: s.size, granularity: s.granularity, state: s.state, checkpoint: s.checkpoint, bufferBytes: s.bufferBytes, durability: s.durability, checkpointTrusted: s.checkpointTrusted, ...(s.untrustedReason !== undefined && { untrustedReason: s.untrustedReason }) });
    } else {
      // The URI line is the contract scripts wait for: once printed, the export and the control socket are ready.
      process.stdout.write(`serving ${disk} (${formatBytes(s.size)}, replica ${s.state}, ${checkpoint}, control ${replica.control}) at ${replica.uri}\n`);
    }
    const signal = await untilSignal();
    await replica.close();
    if (opts.json) emitEvent('stopped', { signal });
    else process.stderr.write(`blockmirror replica: ${signal}: stopped\n`);
  } finally {
    await replica.close();
  }
}

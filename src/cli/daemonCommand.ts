import { writeFile, unlink } from 'node:fs/promises';
import { InvalidArgumentError as CommanderArgumentError, type Command } from 'commander';
import { Daemon } from '../control/Daemon.js';
import { MAX_PENDING_COMMANDS, MAX_QMP_CLIENTS, MAX_WRITE_BUFFER, NEGOTIATION_TIMEOUT_MS } from '../control/qmp/QmpServer.js';
import { applyStartupOptions, StartupError } from '../control/startup.js';
import { DEFAULT_CHECKPOINT_INTERVAL_MS } from '../state/Checkpointer.js';
import { ExitCode } from './exitCodes.js';
import { integerOption, sizeOption } from './options.js';

/** Options of `blockmirror daemon`, as commander parses them (every QEMU-style option repeats). */
interface DaemonCommandOptions {
  qmp: string[];
  blockdev: string[];
  nbdServer: string[];
  export: string[];
  chardev: string[];
  monitor: string[];
  bitmapDir?: string;
  bitmapCheckpointInterval: number;
  pidfile?: string;
  qmpMaxClients: number;
  qmpMaxPending: number;
  qmpMaxUnread: number;
  qmpNegotiationTimeout: number;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** A size that must not be 0 (a limit of 0 bytes would stop every client at its first reply). */
function positiveSizeOption(what: string): (value: string) => number {
  const parse = sizeOption(what);
  return (value) => {
    const n = parse(value);
    if (n < 1) throw new CommanderArgumentError(`${what} must be at least 1 byte`);
    return n;
  };
}

export function registerDaemonCommand(program: Command): void {
  program
    .command('daemon')
    .description('a QMP-compatible storage daemon: block nodes, NBD exports, mirror jobs and dirty bitmaps, driven as qemu-storage-daemon is')
    .option('--qmp <path>', 'QMP monitor on a Unix socket (mode 0600)', collect, [])
    .option('--blockdev <options>', 'a block node: driver=file,node-name=N,filename=F[,cache.direct=on] | driver=raw,node-name=N,file=M | driver=nbd,node-name=N,server.type=unix,server.path=P,export=E', collect, [])
    .option('--nbd-server <options>', 'start the NBD server: addr.type=unix,addr.path=P | addr.type=inet,addr.host=H,addr.port=PORT', collect, [])
    .option('--export <options>', 'an NBD export: type=nbd,id=E,node-name=N[,name=NAME][,writable=on]', collect, [])
    .option('--chardev <options>', 'a socket for --monitor: socket,id=X,path=P,server=on,wait=off', collect, [])
    .option('--monitor <options>', 'a QMP monitor on a --chardev: chardev=X', collect, [])
    .option('--bitmap-dir <dir>', 'where persistent dirty bitmaps are saved (default: next to each image)')
    .option(
      '--bitmap-checkpoint-interval <ms>',
      'milliseconds between saves of a persistent bitmap while it changes (its activity log covers the writes between)',
      integerOption('--bitmap-checkpoint-interval', 10, 3_600_000),
      DEFAULT_CHECKPOINT_INTERVAL_MS,
    )
    .option('--pidfile <path>', 'write the process id here once ready')
    .option('--qmp-max-clients <n>', 'QMP clients each monitor serves at once (more are refused)', integerOption('--qmp-max-clients', 1, 65536), MAX_QMP_CLIENTS)
    .option('--qmp-max-pending <n>', "commands a QMP client may have queued; past it its socket is not read", integerOption('--qmp-max-pending', 1, 65536), MAX_PENDING_COMMANDS)
    .option('--qmp-max-unread <size>', "output a QMP client may leave unread before its commands wait (twice it: disconnected)", positiveSizeOption('--qmp-max-unread'), MAX_WRITE_BUFFER)
    .option('--qmp-negotiation-timeout <seconds>', 'time a QMP client has to send qmp_capabilities after the greeting', integerOption('--qmp-negotiation-timeout', 1, 86400), NEGOTIATION_TIMEOUT_MS / 1000)
    .action(async (opts: DaemonCommandOptions) => {
      await runDaemon(opts);
    });
}

async function runDaemon(opts: DaemonCommandOptions): Promise<void> {
  const daemon = new Daemon({
    bitmapDir: opts.bitmapDir,
    bitmapCheckpointIntervalMs: opts.bitmapCheckpointInterval,
    notice: (message) => process.stderr.write(`blockmirror daemon: ${message}\n`),
    qmpLimits: {
      maxClients: opts.qmpMaxClients,
      maxPendingCommands: opts.qmpMaxPending,
      maxWriteBuffer: opts.qmpMaxUnread,
      negotiationTimeoutMs: opts.qmpNegotiationTimeout * 1000,
    },
  });
  const onSignal = (signal: NodeJS.Signals): void => {
    if (daemon.stopping) process.exit(ExitCode.INTERRUPTED);
    process.stderr.write(`blockmirror daemon: ${signal}: stopping (jobs cancelled, bitmaps saved; again to quit at once)\n`);
    void daemon.shutdown(signal).catch(() => undefined);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await applyStartupOptions(daemon, {
      blockdev: opts.blockdev,
      nbdServer: opts.nbdServer,
      export: opts.export,
      chardev: opts.chardev,
      monitor: opts.monitor,
      qmp: opts.qmp,
    });
    if (opts.pidfile) await writeFile(opts.pidfile, `${process.pid}\n`);
    const reason = await daemon.stopped;
    if (reason.includes('with errors')) {
      process.stderr.write(`blockmirror daemon: stopped (${reason})\n`);
      process.exitCode = ExitCode.FAILED;
    }
  } catch (err) {
    await daemon.shutdown('start-up failed').catch(() => undefined);
    if (err instanceof StartupError) {
      process.stderr.write(`blockmirror daemon: ${err.message}\n`);
      process.exitCode = ExitCode.USAGE;
      return;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (opts.pidfile) await unlink(opts.pidfile).catch(() => undefined);
  }
}

import { Command, CommanderError } from 'commander';
import { ExitCode, exitCodeFor } from './exitCodes.js';
import { reportError } from './output.js';

type Register = (program: Command) => void;

/**
 * Each command lives in a file of its own and registers itself. A run loads only the file of the
 * command it names: the others bring in the mirror, NBD server and QMP layers, which cost a
 * plain copy about a tenth of a second at start-up.
 */
const COMMANDS: Record<string, () => Promise<Register>> = {
  copy: async () => (await import('./copyCommand.js')).registerCopyCommand,
  mirror: async () => (await import('./mirrorCommand.js')).registerMirrorCommand,
  demo: async () => (await import('./demoCommand.js')).registerDemoCommand,
  serve: async () => (await import('./serveCommand.js')).registerServeCommand,
  bitmap: async () => (await import('./bitmapCommand.js')).registerBitmapCommand,
  verify: async () => (await import('./verifyCommand.js')).registerVerifyCommand,
  status: async () => (await import('./statusCommand.js')).registerStatusCommand,
  daemon: async () => (await import('./daemonCommand.js')).registerDaemonCommand,
  replica: async () => (await import('./replicaCommand.js')).registerReplicaCommand,
  replicate: async () => (await import('./replicateCommand.js')).registerReplicateCommand,
};

/** The command tree: the named command alone, or every command (for help, or a name it does not know). */
async function program(name: string | undefined): Promise<Command> {
  const root = new Command('blockmirror')
    .description('live block-copy engine: copy an image while it is written, keep the target in sync, switch over on command')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  const names = name !== undefined && Object.hasOwn(COMMANDS, name) ? [name] : Object.keys(COMMANDS);
  for (const register of await Promise.all(names.map((n) => COMMANDS[n]!()))) register(root);
  for (const cmd of root.commands) cmd.exitOverride();
  return root;
}

/** Runs the command line; resolves to the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await (await program(argv[0])).parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.OK;
  } catch (err) {
    // --help and --version "fail" with exit code 0.
    if (err instanceof CommanderError && err.exitCode === 0) return ExitCode.OK;
    reportError(err, argv.includes('--json'));
    return exitCodeFor(err);
  }
}

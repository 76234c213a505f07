import { Command, CommanderError } from 'commander';
import { registerBitmapCommand } from './bitmapCommand.js';
import { registerCopyCommand } from './copyCommand.js';
import { registerDaemonCommand } from './daemonCommand.js';
import { registerDemoCommand } from './demoCommand.js';
import { ExitCode, exitCodeFor } from './exitCodes.js';
import { registerMirrorCommand } from './mirrorCommand.js';
import { reportError } from './output.js';
import { registerServeCommand } from './serveCommand.js';

/** The command tree. Each command lives in a file of its own and registers itself here. */
function program(): Command {
  const root = new Command('blockmirror')
    .description('live block-copy engine: copy an image while it is written, keep the target in sync, switch over on command')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerCopyCommand(root);
  registerMirrorCommand(root);
  registerDemoCommand(root);
  registerServeCommand(root);
  registerBitmapCommand(root);
  registerDaemonCommand(root);
  for (const cmd of root.commands) cmd.exitOverride();
  return root;
}

/** Runs the command line; resolves to the exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  try {
    await program().parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.OK;
  } catch (err) {
    // --help and --version "fail" with exit code 0.
    if (err instanceof CommanderError && err.exitCode === 0) return ExitCode.OK;
    reportError(err, argv.includes('--json'));
    return exitCodeFor(err);
  }
}

import { command } from './command.js';

export const miscCommands = [
  command('query-version', undefined, (_a, { daemon }) => daemon.version),
  command('query-commands', undefined, (_a, { daemon }) => daemon.commandNames.map((name) => ({ name }))),
  command('quit', undefined, (_a, { daemon, session }) => {
    // The reply goes out first; then the daemon stops (jobs cancelled, bitmaps saved) and exits.
    if (session) session.afterReply(() => void daemon.shutdown('quit'));
    else void daemon.shutdown('quit');
  }),
];

import { CommanderError } from 'commander';
import { AbortError, InvalidArgumentError } from '../errors.js';

/** The command's exit statuses (documented in the README). */
export const ExitCode = {
  /** The command did what it was asked. */
  OK: 0,
  /** The command line is wrong: an unknown option, a bad value, a missing argument. Nothing was touched. */
  USAGE: 1,
  /** The work failed: a source or target that cannot be used, an I/O error, a failed job. */
  FAILED: 2,
  /** `verify`: the images differ (diff and cmp say 1, which is taken here by usage errors). */
  DIFFER: 3,
  /** Interrupted (Ctrl-C, SIGTERM) and stopped cleanly. */
  INTERRUPTED: 130,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** The exit status an error ends the command with. */
export function exitCodeFor(err: unknown): ExitCodeValue {
  if (err instanceof AbortError) return ExitCode.INTERRUPTED;
  if (err instanceof InvalidArgumentError || err instanceof CommanderError) return ExitCode.USAGE;
  return ExitCode.FAILED;
}

import { InvalidArgumentError as CommanderArgumentError, Option, type Command } from 'commander';
import { BlockmirrorError } from '../errors.js';
import { DEFAULT_CHUNK_SIZE, defaultWorkers } from '../sched/tuning.js';
import { parseSize } from '../util/size.js';

/** A commander parser for byte counts with suffixes (64K, 1M, 4G). */
export function sizeOption(what: string): (value: string) => number {
  return (value) => rethrowForCommander(() => parseSize(value, what));
}

/** A commander parser for whole numbers in a range. */
export function integerOption(what: string, min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || n < min || n > max) {
      throw new CommanderArgumentError(`${what} must be a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

/** A share from 0 to 1 (`0.5`); anything else is a usage error naming the option. */
export function shareOption(what: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === '' || !(n >= 0 && n <= 1)) throw new CommanderArgumentError(`${what} must be a share from 0 to 1, not '${value}'`);
    return n;
  };
}

/** An option that takes one of `choices` (anything else is a usage error naming them). */
export function choiceOption(flags: string, description: string, choices: readonly string[], defaultValue: string): Option {
  return new Option(flags, description).choices(choices).default(defaultValue);
}

/** The knobs `copy` and `mirror` share, as commander parses them. */
export interface CopyTuningOptions {
  chunkSize: number;
  workers: number;
  direct: boolean;
  speed: number;
  json: boolean;
  progress: boolean;
}

/** Adds the options a copy and a mirror share on the command line (see {@link CopyTuningOptions}). */
export function addCopyTuningOptions(cmd: Command, defaults: { workers?: number } = {}): Command {
  return cmd
    .option('-c, --chunk-size <size>', 'largest extent one operation copies', sizeOption('--chunk-size'), DEFAULT_CHUNK_SIZE)
    .option('-w, --workers <n>', 'worker threads', integerOption('--workers', 1, 64), defaults.workers ?? defaultWorkers())
    .option('--direct', 'bypass the page cache (O_DIRECT)', false)
    .option('--speed <bytes/s>', 'rate limit in bytes per second (0: unlimited)', sizeOption('--speed'), 0)
    .option('--json', 'NDJSON events on stdout instead of a progress bar', false)
    .option('--no-progress', 'no progress bar');
}

/** Commander reports its own InvalidArgumentError as a usage error naming the option. */
function rethrowForCommander<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof BlockmirrorError) throw new CommanderArgumentError(err.message);
    throw err;
  }
}

import { InvalidArgumentError as CommanderArgumentError } from 'commander';
import { BlockmirrorError } from '../errors.js';
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

/** Commander reports its own InvalidArgumentError as a usage error naming the option. */
function rethrowForCommander<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof BlockmirrorError) throw new CommanderArgumentError(err.message);
    throw err;
  }
}

import { ErrorCode, InvalidArgumentError } from '../errors.js';

/** Binary multipliers for size suffixes, as qemu-img and nbdcopy read them (K = 1024), as powers of two. */
const SIZE_SHIFT: Readonly<Record<string, bigint>> = {
  '': 0n,
  K: 10n,
  M: 20n,
  G: 30n,
  T: 40n,
  P: 50n,
};

/**
 * A trimmed size: digits, optional decimals, then a suffix letter (which may be followed by `B`
 * or `iB`), or just `B` (or `iB`). Every repeated part is followed by a character it cannot match, so matching is linear (leading
 * and trailing spaces are trimmed first: `\s*` on both sides of an optional group backtracks
 * quadratically on a long run of spaces).
 */
const SIZE_PATTERN = /^(\d+)(?:\.(\d+))?\s*(?:([kKmMgGtTpP])(?:i?[bB])?|i?[bB])?$/;

/** Most significant digits a whole number of bytes up to 2^53 - 1 has. */
const MAX_SAFE_DIGITS = String(Number.MAX_SAFE_INTEGER).length;
/**
 * Most decimals (after dropping trailing zeros) a fraction can have and still be whole once
 * multiplied by at most 2^50: d / 10^f * 2^50 is whole only if 5^f divides d, which leaves d odd
 * (it does not end in 0), so 2^f must divide 2^50.
 */
const MAX_WHOLE_DECIMALS = 50;

/** The text of an input as an error message quotes it: huge inputs are cut, so the message stays a line. */
function quoted(text: string): string {
  return text.length <= 64 ? `'${text}'` : `'${text.slice(0, 60)}...' (${text.length} characters)`;
}

/**
 * Parses a byte count with an optional binary suffix: `4096`, `64K`, `1M`, `4G`, `1.5G`, `64KiB`.
 * Decimals are exact (no floating point): `1.5K` is 1536, and a value that is not a whole number of
 * bytes (`1.3`, `0.1K`) or is above `Number.MAX_SAFE_INTEGER` is refused, never rounded.
 * Throws {@link InvalidArgumentError} (`BM_ERR_INVALID_OPTION`) naming `what` on anything else.
 */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text;
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${what}: ${text} is not a byte count`);
  }
  const m = SIZE_PATTERN.exec(text.trim());
  if (!m) {
    throw new InvalidArgumentError(
      ErrorCode.INVALID_OPTION,
      `${what}: ${quoted(text)} is not a size (examples: 4096, 64K, 1M, 4G)`,
    );
  }
  const whole = m[1]!.replace(/^0+(?=\d)/, '');
  const decimals = withoutTrailingZeros(m[2] ?? '');
  if (whole.length > MAX_SAFE_DIGITS) throw tooLarge(text, what);
  if (decimals.length > MAX_WHOLE_DECIMALS) throw notWhole(text, what);
  // Exact: the value is (whole.decimals * 2^shift), an integer only if 10^decimals divides it.
  const scale = 10n ** BigInt(decimals.length);
  const scaled = (BigInt(whole) * scale + BigInt(decimals || '0')) << SIZE_SHIFT[(m[3] ?? '').toUpperCase()]!;
  if (scaled % scale !== 0n) throw notWhole(text, what);
  const value = scaled / scale;
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw tooLarge(text, what);
  return Number(value);
}

/** `digits` without its trailing zeros (a loop: `/0+$/` backtracks quadratically on long digit runs). */
function withoutTrailingZeros(digits: string): string {
  let end = digits.length;
  while (end > 0 && digits.charCodeAt(end - 1) === 0x30) end--;
  return digits.slice(0, end);
}

function notWhole(text: string, what: string): InvalidArgumentError {
  return new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${what}: ${quoted(text)} is not a whole number of bytes`);
}

function tooLarge(text: string, what: string): InvalidArgumentError {
  return new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${what}: ${quoted(text)} is more than ${Number.MAX_SAFE_INTEGER} bytes`);
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** Formats a byte count for people: `1.5 GiB`, `512 B`. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

/** Formats a duration in seconds for people: `850 ms`, `12.3 s`, `4m05s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds - m * 60);
  return `${m}m${String(s).padStart(2, '0')}s`;
}

/** True when `n` is a positive power of two. */
export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

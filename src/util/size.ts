import { ErrorCode, InvalidArgumentError } from '../errors.js';

/** Binary multipliers for size suffixes, as qemu-img and nbdcopy read them (K = 1024). */
const SIZE_SUFFIX: Readonly<Record<string, number>> = {
  '': 1,
  B: 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
  P: 2 ** 50,
};

const SIZE_PATTERN = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:i?[bB])?\s*$/;

/**
 * Parses a byte count with an optional binary suffix: `4096`, `64K`, `1M`, `4G`, `1.5G`, `64KiB`.
 * Throws {@link InvalidArgumentError} (`BM_ERR_INVALID_OPTION`) naming `what` on anything else.
 */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') {
    if (Number.isSafeInteger(text) && text >= 0) return text;
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${what}: ${text} is not a byte count`);
  }
  const m = SIZE_PATTERN.exec(text);
  if (!m) {
    throw new InvalidArgumentError(
      ErrorCode.INVALID_OPTION,
      `${what}: '${text}' is not a size (examples: 4096, 64K, 1M, 4G)`,
    );
  }
  const value = Number(m[1]) * SIZE_SUFFIX[(m[2] ?? '').toUpperCase()]!;
  if (!Number.isSafeInteger(value)) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${what}: '${text}' is not a whole number of bytes`);
  }
  return value;
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

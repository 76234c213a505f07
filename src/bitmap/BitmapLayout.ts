import { ErrorCode, InvalidArgumentError } from '../errors.js';

/** Default bytes per bit: QEMU mirror's default granularity (one bit per 64 KiB chunk). */
export const DEFAULT_GRANULARITY = 65536;
/** Smallest granularity: one sector. */
export const MIN_GRANULARITY = 512;
/** Largest granularity: 64 MiB. */
export const MAX_GRANULARITY = 64 * 1024 * 1024;
/**
 * Most bits a bitmap may have (2^30; at 64 KiB granularity a 64 TiB image, at 512 B 512 GiB).
 * The dirty count is a signed 32-bit sum in shared memory (its slots wrap, their sum modulo
 * 2^32 is exact); while operations run on several threads it may briefly be ahead of the bits by
 * what they have changed but not yet counted, and 2^30 leaves that room below 2^31. A larger
 * image needs a larger granularity.
 */
export const MAX_BIT_COUNT = 2 ** 30;

/** Int32 words in a 64-byte cache line: each count slot has a line of its own. */
const LINE_WORDS = 16;
/**
 * Count slots threads can own. The dirty count is the sum of all slots: a thread adds to its own
 * slot with plain stores, not a locked add; threads past these share a slot that is updated with
 * Atomics.add.
 */
export const PRIVATE_COUNT_SLOTS = 7;
/** Index of the shared count slot, the one handles without a private slot add to atomically. */
export const SHARED_COUNT_INDEX = 0;
/** Index of the word that hands out private slots (`Atomics.add` returns the next one). */
export const SLOT_CLAIM_INDEX = 1;
/** A header word nothing writes: an image of no bits has no top word, and waits on this one. */
export const QUIET_INDEX = 2;
/** Words before level 0: the shared slot's line, then a line per private slot. */
export const HEADER_WORDS = (PRIVATE_COUNT_SLOTS + 1) * LINE_WORDS;

/** Index of each count slot: the shared one, then private slot k at 1 + k. */
export const COUNT_SLOT_INDEXES: readonly number[] = Array.from({ length: PRIVATE_COUNT_SLOTS + 1 }, (_, k) => k * LINE_WORDS);

/**
 * Where each level lives in the shared Int32Array. Level 0 holds the dirty bits; in level k >= 1,
 * bit j says that word j of level k-1 may be non-zero. The top level is a single word (or level 0
 * itself when that is one word or none).
 */
export interface BitmapLayout {
  readonly bitCount: number;
  /** Index of each level's first word. */
  readonly levelStart: Int32Array;
  /** Each level's word count. */
  readonly levelWords: Int32Array;
  /** Index of the top level. */
  readonly top: number;
  /** All the words: header plus every level. */
  readonly totalWords: number;
}

function invalid(message: string): InvalidArgumentError {
  return new InvalidArgumentError(ErrorCode.INVALID_OPTION, message);
}

/** Checks an image size and granularity; returns the bit count. */
export function bitCountFor(size: number, granularity: number): number {
  if (!Number.isSafeInteger(granularity) || granularity < MIN_GRANULARITY || granularity > MAX_GRANULARITY || (granularity & (granularity - 1)) !== 0) {
    throw invalid(`bitmap granularity must be a power of two from ${MIN_GRANULARITY} to ${MAX_GRANULARITY} bytes, not ${granularity}`);
  }
  if (!Number.isSafeInteger(size) || size < 0) {
    throw invalid(`bitmap image size must be a whole number of bytes, not ${size}`);
  }
  const bitCount = Math.ceil(size / granularity);
  if (bitCount > MAX_BIT_COUNT) {
    throw invalid(
      `an image of ${size} bytes needs ${bitCount} bits at granularity ${granularity}; the most is ${MAX_BIT_COUNT}: use a larger granularity`,
    );
  }
  return bitCount;
}

/** The word layout of a bitmap of `bitCount` bits. */
export function layoutFor(bitCount: number): BitmapLayout {
  const starts: number[] = [];
  const words: number[] = [];
  let start = HEADER_WORDS;
  let n = Math.ceil(bitCount / 32);
  for (;;) {
    starts.push(start);
    words.push(n);
    start += n;
    if (n <= 1) break;
    n = Math.ceil(n / 32);
  }
  return {
    bitCount,
    levelStart: Int32Array.from(starts),
    levelWords: Int32Array.from(words),
    top: starts.length - 1,
    totalWords: start,
  };
}

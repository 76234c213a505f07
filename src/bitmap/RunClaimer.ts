import { ErrorCode, InvalidArgumentError } from '../errors.js';
import type { DirtyBitmap } from './DirtyBitmap.js';
import { firstSetIn, lastSetIn } from './wordOps.js';

/** Bits per extent for a byte limit: whole granules, at least one. */
export function maxBitsFor(bitmap: DirtyBitmap, maxBytes: number): number {
  if (!(maxBytes > 0)) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `maxBytes must be positive, not ${maxBytes}`);
  return Math.max(1, Math.min(bitmap.bitCount, Math.floor(maxBytes / bitmap.granularity)));
}

/** Claims dirty runs one at a time: the step both cursors (DirtyExtentCursor, DirtyRangeCursor) take. */
export class RunClaimer {
  /** Whether the last {@link next} appended an extent. */
  claimed = false;
  readonly #bitmap: DirtyBitmap;
  readonly maxBits: number;
  /** What the last clear took. */
  readonly #scratch: Uint32Array;

  /** `previous` if it claims runs of `maxBits` of `bitmap` already (so a take allocates nothing), else a new one. */
  static reuse(previous: RunClaimer | undefined, bitmap: DirtyBitmap, maxBits: number): RunClaimer {
    return previous?.maxBits === maxBits && previous.#bitmap === bitmap ? previous : new RunClaimer(bitmap, maxBits);
  }

  constructor(bitmap: DirtyBitmap, maxBits: number) {
    this.#bitmap = bitmap;
    this.maxBits = maxBits;
    this.#scratch = new Uint32Array(Math.ceil(maxBits / 32));
  }

  /**
   * Clears the first dirty run at or after bit `pos` and before `limit` (at most `maxBits` long),
   * appends the part of it this clear took as an `offset, length` pair (another drainer may have
   * taken some bits meanwhile), and returns the bit after the run; -1 when there is none.
   */
  next(pos: number, limit: number, out: number[]): number {
    const bitmap = this.#bitmap;
    this.claimed = false;
    const start = bitmap.nextDirty(pos);
    if (start < 0 || start >= limit) return -1;
    const end = bitmap.nextClean(start, Math.min(limit, start + this.maxBits));
    const claimed = bitmap.testAndClear(start, end - start, this.#scratch);
    const words = Math.ceil((end - start) / 32);
    const first = firstSetIn(claimed, words);
    if (first < 0) return end;
    const last = start + lastSetIn(claimed, words);
    out.push((start + first) * bitmap.granularity, bitmap.bytesBetween(start + first, last + 1));
    this.claimed = true;
    return end;
  }
}

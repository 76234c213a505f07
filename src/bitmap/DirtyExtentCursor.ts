import type { ExtentSource } from '../sched/ExtentSource.js';
import type { DirtyBitmap } from './DirtyBitmap.js';
import { maxBitsFor, RunClaimer } from './RunClaimer.js';

/**
 * Drains a live dirty bitmap for the copier: the scheduler's {@link ExtentSource} for a mirror.
 *
 * Each {@link take} goes on from where the last one stopped, to the end of the image and then
 * round from bit 0 (like QEMU's mirror), so writes that keep landing near the start cannot starve
 * the rest. It clears each extent's bits before handing the extent out (invariant 2 of docs/architecture.md):
 * a write that lands after that marks the bits again and the extent is copied again. The caller
 * marks an extent again if its copy fails.
 */
export class DirtyExtentCursor implements ExtentSource {
  /** A live bitmap always may get new work. */
  readonly exhausted = false as const;
  readonly #bitmap: DirtyBitmap;
  #position = 0;
  #claimer: RunClaimer | undefined;

  constructor(bitmap: DirtyBitmap) {
    this.#bitmap = bitmap;
  }

  /** The bit the next {@link take} starts at. */
  get position(): number {
    return this.#position;
  }

  /**
   * Claims up to `maxExtents` dirty extents, appending `offset, length` byte pairs to `out`, and
   * returns how many it appended (0: the bitmap is clean). Each extent is a run of dirty bits,
   * clipped to the image size, at most `maxBytes` long; when `maxBytes` is less than a granule,
   * an extent is one granule (a bit cannot be claimed in part).
   */
  take(out: number[], maxExtents: number, maxBytes: number): number {
    const bitmap = this.#bitmap;
    const bits = bitmap.bitCount;
    const maxBits = maxBitsFor(bitmap, maxBytes);
    if (maxExtents <= 0 || bits === 0) return 0;
    const claim = (this.#claimer = RunClaimer.reuse(this.#claimer, bitmap, maxBits));
    // One lap: from the start position to the end, then from bit 0 back up to it.
    const startedAt = this.#position;
    let limit = bits;
    let pos = startedAt;
    let n = 0;
    while (n < maxExtents) {
      const next = pos < limit ? claim.next(pos, limit, out) : -1;
      if (next < 0) {
        if (limit !== bits || startedAt === 0) break;
        limit = startedAt;
        pos = 0;
        continue;
      }
      pos = next;
      if (claim.claimed) n++;
    }
    this.#position = pos >= bits ? 0 : pos;
    return n;
  }
}

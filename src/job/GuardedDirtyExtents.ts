import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { DirtyExtentCursor } from '../bitmap/DirtyExtentCursor.js';
import type { BatchOutcome } from '../sched/CopyScheduler.js';
import type { ExtentSource } from '../sched/ExtentSource.js';
import type { CopyFailure } from '../workers/CopyTask.js';
import type { RangeLocks } from './RangeLocks.js';
import type { UnsafeTestHooks } from './TrackedDevice.js';
import type { CopyPeriod, UnflushedCopies } from '../state/UnflushedCopies.js';

/** An extent whose copy failed; its bits are already marked dirty again. */
export interface FailedExtent {
  readonly offset: number;
  readonly length: number;
  readonly failure: CopyFailure;
}

/**
 * A mirror's work: dirty extents claimed from the bitmap (their bits cleared before the copy
 * reads: invariant 2), minus those an intercepted write holds or waits for (invariant 3), which
 * are marked dirty again to be copied later. Each handed-out batch holds its ranges until
 * `release`d with the same array the batch was handed out in.
 */
export class GuardedDirtyExtents implements ExtentSource {
  readonly exhausted = false;
  readonly #bitmap: DirtyBitmap;
  readonly #cursor: Pick<ExtentSource, 'take'>;
  readonly #locks: RangeLocks;
  readonly #hooks: UnsafeTestHooks;
  readonly #held = new Map<readonly number[], { releases: Array<() => void>; period: CopyPeriod | undefined }>();
  readonly #unflushed: UnflushedCopies | undefined;

  /**
   * `unflushed`: with a state directory, where claimed ranges wait until the target has them
   * durably. `cursor`: what claims the bits (default: the whole bitmap, round and round).
   */
  constructor(
    bitmap: DirtyBitmap,
    locks: RangeLocks,
    hooks: UnsafeTestHooks = {},
    unflushed?: UnflushedCopies,
    cursor: Pick<ExtentSource, 'take'> = new DirtyExtentCursor(bitmap),
  ) {
    this.#bitmap = bitmap;
    this.#unflushed = unflushed;
    this.#cursor = cursor;
    this.#locks = locks;
    this.#hooks = hooks;
  }

  take(out: number[], maxExtents: number, maxBytes: number): number {
    const claimed: number[] = [];
    const n = this.#cursor.take(claimed, maxExtents, maxBytes);
    const releases: Array<() => void> = [];
    const start = out.length;
    let count = 0;
    for (let i = 0; i < 2 * n; i += 2) {
      const offset = claimed[i]!;
      const length = claimed[i + 1]!;
      const release = this.#hooks.skipWriteBlockingWait ? () => {} : this.#locks.tryHoldCopy(offset, offset + length);
      if (!release) {
        this.#bitmap.mark(offset, length); // a write holds it: copy it after the write
        continue;
      }
      // Broken order for tests: leave the bits set during the copy, clear them after it.
      if (this.#hooks.clearAfterRead) this.#bitmap.mark(offset, length);
      releases.push(release);
      out.push(offset, length);
      count++;
    }
    if (count > 0) this.#held.set(out, { releases, period: this.#unflushed?.claim(out.slice(start)) });
    return count;
  }

  /**
   * Ends a finished batch: marks dirty again what it did not copy (the extents a stopped stream
   * did not reach, and failures: invariant 2), then ends its holds. Returns the failures, and the
   * bytes not copied.
   */
  finish({ extents, result }: BatchOutcome): { failed: FailedExtent[]; uncopiedBytes: number } {
    let uncopiedBytes = 0;
    for (let i = result.stoppedAt ?? extents.length / 2; i < extents.length / 2; i++) {
      this.#bitmap.mark(extents[2 * i]!, extents[2 * i + 1]!);
      uncopiedBytes += extents[2 * i + 1]!;
    }
    const failed = result.failures.map((failure): FailedExtent => {
      const offset = extents[2 * failure.index]!;
      const length = extents[2 * failure.index + 1]!;
      this.#bitmap.mark(offset, length);
      uncopiedBytes += length;
      return { offset, length, failure };
    });
    this.release(extents);
    return { failed, uncopiedBytes };
  }

  /** Ends the holds of a finished batch. */
  release(extents: readonly number[]): void {
    if (this.#hooks.clearAfterRead) {
      const g = this.#bitmap.granularity;
      for (let i = 0; i < extents.length; i += 2) {
        const first = Math.floor(extents[i]! / g);
        const end = Math.ceil((extents[i]! + extents[i + 1]!) / g);
        this.#bitmap.testAndClear(first, Math.min(end, this.#bitmap.bitCount) - first);
      }
    }
    const held = this.#held.get(extents);
    if (!held) return;
    for (const release of held.releases) release();
    if (held.period) this.#unflushed!.finished(held.period);
    this.#held.delete(extents);
  }
}

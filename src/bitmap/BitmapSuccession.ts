import { BitmapError, ErrorCode } from '../errors.js';
import type { DirtyBitmap } from './DirtyBitmap.js';

/**
 * A frozen bitmap and its successor, from {@link DirtyBitmap.freeze}: our form of QEMU's
 * `bdrv_dirty_bitmap_create_successor` / `abdicate` / `reclaim`.
 *
 * QEMU swaps in a new successor object that writers must switch to. Here writers on other threads
 * keep their handles, so the roles go the other way: the live bitmap stays where it is and becomes
 * the successor (it now records only writes after the freeze), and the bits it had move into the
 * new, read-only `frozen` bitmap.
 * - {@link Succession.commit} is QEMU's *abdicate*: the job succeeded, the frozen bits are dropped
 *   and the successor alone carries on.
 * - {@link Succession.abort} is QEMU's *reclaim*: the job failed, the frozen bits are merged (OR)
 *   back into the successor, so nothing is lost (invariant 5 of docs/architecture.md).
 *
 * The frozen bitmap is read-only; a job that wants to drain it copies it first:
 * `const work = DirtyBitmap.create(size, granularity); work.merge(succession.frozen)`.
 */
export interface Succession {
  /** The bits the bitmap had when it was frozen; read-only. */
  readonly frozen: DirtyBitmap;
  /** The live bitmap, recording writes since the freeze. */
  readonly successor: DirtyBitmap;
  /** `pending` until commit or abort. */
  readonly state: 'pending' | 'committed' | 'aborted';
  /** Success: drop the frozen bits. */
  commit(): void;
  /** Failure: OR the frozen bits back into the successor. */
  abort(): void;
}

/** The {@link Succession} that {@link DirtyBitmap.freeze} returns. */
export class BitmapSuccession implements Succession {
  readonly frozen: DirtyBitmap;
  readonly successor: DirtyBitmap;
  #state: 'pending' | 'committed' | 'aborted' = 'pending';

  constructor(frozen: DirtyBitmap, successor: DirtyBitmap) {
    this.frozen = frozen;
    this.successor = successor;
  }

  get state(): 'pending' | 'committed' | 'aborted' {
    return this.#state;
  }

  commit(): void {
    this.#settle('committed');
  }

  abort(): void {
    this.#settle('aborted');
    this.successor.merge(this.frozen);
  }

  #settle(to: 'committed' | 'aborted'): void {
    if (this.#state !== 'pending') {
      throw new BitmapError(ErrorCode.BITMAP_STATE, `the succession is already ${this.#state}`);
    }
    this.#state = to;
  }
}

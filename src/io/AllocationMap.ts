import type { AllocationExtent, BlockDevice } from './BlockDevice.js';

/** Bytes of allocation status asked for at once: one round trip covers this much of a sequential copy. */
export const DEFAULT_ALLOCATION_LOOKAHEAD = 64 << 20;
/** Follow-up queries for one range when the server answers in small pieces; past this, the range is read. */
const MAX_QUERIES_PER_RANGE = 8;

/** A device that can report its allocation status. */
export type AllocationReporter = Pick<BlockDevice, 'size'> & Required<Pick<BlockDevice, 'blockStatus'>>;

/** A run of known status: [start, end) and whether it reads as zeros. */
interface KnownRun {
  readonly start: number;
  readonly end: number;
  readonly zero: boolean;
}

/**
 * Answers "does this range read as zeros?" for a mostly sequential reader (a copy worker) from a
 * device's allocation status (NBD `base:allocation`), so the reader can skip reading holes. It
 * asks for a whole window ahead (64 MiB by default) and answers later ranges in that window from
 * memory, so the cost is one round trip per window rather than one per chunk; concurrent
 * questions about the same window share one query.
 */
export class AllocationMap {
  readonly #device: AllocationReporter;
  readonly #lookahead: number;
  #runs: KnownRun[] = [];
  #fetching: { start: number; end: number; done: Promise<void> } | undefined;

  constructor(device: AllocationReporter, lookahead = DEFAULT_ALLOCATION_LOOKAHEAD) {
    this.#device = device;
    this.#lookahead = lookahead;
  }

  /** True when every byte of `[offset, offset+length)` is known to read as zeros (false when unsure). */
  async readsAsZero(offset: number, length: number): Promise<boolean> {
    const end = offset + length;
    let at = offset;
    for (let queries = 0; at < end; ) {
      const run = this.#runAt(at);
      if (run) {
        if (!run.zero) return false;
        at = run.end;
        continue;
      }
      const pending = this.#fetching;
      if (pending && at >= pending.start && at < pending.end) {
        await pending.done;
        if (this.#runAt(at)) continue; // the shared query answered it
      }
      if (++queries > MAX_QUERIES_PER_RANGE) return false;
      await this.#fetch(at, Math.max(end - at, this.#lookahead));
      if (!this.#runAt(at)) return false;
    }
    return true;
  }

  #runAt(offset: number): KnownRun | undefined {
    // Few runs per window, and the reader asks about the front: a linear scan is fine.
    for (const run of this.#runs) if (offset >= run.start && offset < run.end) return run;
    return undefined;
  }

  async #fetch(offset: number, length: number): Promise<void> {
    const wanted = Math.min(length, this.#device.size - offset);
    const done = this.#device.blockStatus(offset, wanted).then(
      (extents) => {
        this.#runs = runsFrom(offset, extents);
      },
      () => {
        // A failed query just means "unknown": the range gets read like any other.
      },
    );
    this.#fetching = { start: offset, end: offset + wanted, done };
    await done;
    if (this.#fetching?.done === done) this.#fetching = undefined;
  }
}

function runsFrom(offset: number, extents: readonly AllocationExtent[]): KnownRun[] {
  const runs: KnownRun[] = [];
  let at = offset;
  for (const e of extents) {
    const last = runs[runs.length - 1];
    if (last && last.zero === e.zero) runs[runs.length - 1] = { start: last.start, end: at + e.length, zero: e.zero };
    else runs.push({ start: at, end: at + e.length, zero: e.zero });
    at += e.length;
  }
  return runs;
}

import { performance } from 'node:perf_hooks';
import { errnoOf } from '../errors.js';
import { AllocationMap } from '../io/AllocationMap.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { preemption } from '../util/preemption.js';
import { isAllZero } from '../util/zero.js';
import { BufferPool } from './BufferPool.js';
import type { CopyFailure, CopyTask, CopyTaskResult } from './CopyTask.js';

/** What a copy of a batch needs from its task (the device specs are resolved already). */
export type CopyBatch = Pick<CopyTask, 'extents' | 'detectZeroes' | 'targetIsZero' | 'sequential' | 'preemptAfterRead' | 'zeroGranule' | 'cancel' | 'stopAtZero' | 'stopAtData'>;

interface Totals {
  bytesWritten: number;
  bytesZero: number;
}

/**
 * Copies batches of extents from one open source to one open target, the extents of a batch
 * concurrently: read source → zero check → write target. Keeps reusable buffers, aligned for
 * whichever device needs it, and the source's allocation status where it reports one (NBD
 * `base:allocation`), so holes are not read at all. Runs on whatever thread owns the devices:
 * a copy worker, or the coordinator itself for NBD exports (see job/connectionPlan.ts).
 */
export class ExtentCopier {
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  readonly #buffers: BufferPool;
  readonly #allocation: AllocationMap | undefined;

  /** `alignForSource`: buffers come from the source's `allocBuffer` (O_DIRECT source), else the target's. */
  constructor(source: BlockDevice, target: BlockDevice, alignForSource: boolean) {
    this.source = source;
    this.target = target;
    const aligner = alignForSource ? source : target;
    this.#buffers = new BufferPool((bytes) => aligner.allocBuffer(bytes));
    const blockStatus = source.blockStatus?.bind(source);
    this.#allocation = blockStatus ? new AllocationMap({ size: source.size, blockStatus }) : undefined;
  }

  async copy(task: CopyBatch): Promise<CopyTaskResult> {
    const count = task.extents.length / 2;
    const readMicros = new Float64Array(count).fill(NaN);
    const writeMicros = new Float64Array(count).fill(NaN);
    const failures: CopyFailure[] = [];
    const totals: Totals = { bytesWritten: 0, bytesZero: 0 };
    const result = (stoppedAt?: number, atData = false): CopyTaskResult => ({
      ...totals,
      readMicros,
      writeMicros,
      failures,
      ...(stoppedAt !== undefined ? { stoppedAt } : {}),
      ...(atData ? { stoppedAtData: true } : {}),
    });
    if (task.sequential) {
      for (let i = 0; i < count; i++) {
        if (task.cancel && Atomics.load(task.cancel, 0) !== 0) return result(i);
        const zero = totals.bytesZero;
        await this.#copyOne(task, i, readMicros, writeMicros, failures, totals);
        const allZero = totals.bytesZero - zero === task.extents[2 * i + 1]!;
        if (i + 1 < count && (task.stopAtZero ? allZero : task.stopAtData === true && !allZero)) return result(i + 1, !allZero);
      }
    } else {
      const work: Promise<void>[] = [];
      for (let i = 0; i < count; i++) work.push(this.#copyOne(task, i, readMicros, writeMicros, failures, totals));
      await Promise.all(work);
    }
    return result();
  }

  async #copyOne(
    task: CopyBatch,
    index: number,
    readMicros: Float64Array,
    writeMicros: Float64Array,
    failures: CopyFailure[],
    totals: Totals,
  ): Promise<void> {
    const { source, target } = this;
    const offset = task.extents[2 * index]!;
    const length = task.extents[2 * index + 1]!;
    const buf = await this.#buffers.take(length);
    let operation: CopyFailure['operation'] = 'read';
    try {
      const t0 = performance.now();
      // A range the source reports as reading zeros (a hole of an NBD export) is not read at all.
      const knownZero = task.detectZeroes && this.#allocation !== undefined && (await this.#allocation.readsAsZero(offset, length));
      if (!knownZero) await source.read(buf, offset);
      else if (!task.targetIsZero && !target.efficientZeroes) buf.fill(0); // zeroTarget may write it
      const t1 = performance.now();
      readMicros[index] = (t1 - t0) * 1000;
      if (task.preemptAfterRead) await preemption();
      operation = 'write';
      const granule = task.detectZeroes && !knownZero && task.zeroGranule !== undefined && task.zeroGranule < length ? task.zeroGranule : length;
      const isZero = (at: number): boolean => task.detectZeroes && (knownZero || isAllZero(buf.subarray(at, Math.min(length, at + granule))));
      // Runs of pieces alike (all zero, or all not) are written as one request each, all at once.
      const runs: Array<Promise<void>> = [];
      for (let at = 0, zero = isZero(0); at < length; ) {
        let end = Math.min(length, at + granule);
        let next = zero;
        while (end < length && (next = isZero(end)) === zero) end = Math.min(length, end + granule);
        runs.push(this.#writeRun(task, buf.subarray(at, end), offset + at, zero, totals));
        at = end;
        zero = next;
      }
      await settleAll(runs);
      writeMicros[index] = (performance.now() - t1) * 1000;
    } catch (err) {
      failures.push({ index, operation, errno: errnoOf(err), message: err instanceof Error ? err.message : String(err) });
    } finally {
      this.#buffers.give(buf);
    }
  }

  /** Writes one run of an extent: its data, or (a zero run) as little as makes the target read zeros there. */
  async #writeRun(task: CopyBatch, run: Buffer, offset: number, zero: boolean, totals: Totals): Promise<void> {
    if (!zero) {
      await this.target.write(run, offset);
      totals.bytesWritten += run.length;
      return;
    }
    totals.bytesZero += run.length;
    if (task.targetIsZero) return;
    // Not `totals.bytesWritten += await ...`: that reads the total before the await and loses concurrent updates.
    const written = await this.#zeroTarget(run, offset);
    totals.bytesWritten += written;
  }

  /**
   * Makes the target read as zeros over a zero chunk, writing as little as possible: NBD zeroes
   * without data; a file is read first, and written only where it is not zero already (a hole
   * reads fast and stays a hole). Returns the bytes written.
   */
  async #zeroTarget(zeros: Buffer, offset: number): Promise<number> {
    const { target } = this;
    if (target.efficientZeroes) {
      await target.writeZeroes(offset, zeros.length);
      return zeros.length;
    }
    const current = await this.#buffers.take(zeros.length);
    try {
      await target.read(current, offset);
      if (isAllZero(current)) return 0;
    } finally {
      this.#buffers.give(current);
    }
    await target.write(zeros, offset);
    return zeros.length;
  }
}

/** Waits for every promise, then throws the first rejection, if any (no write is left running when the buffer goes back to the pool). */
async function settleAll(promises: ReadonlyArray<Promise<void>>): Promise<void> {
  const failed = (await Promise.allSettled(promises)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

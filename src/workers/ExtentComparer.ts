import { errnoOf } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { BufferPool } from './BufferPool.js';
import type { VerifyFailure, VerifyTask, VerifyTaskResult } from './VerifyTask.js';

/**
 * Compares batches of extents of two open devices: each extent is read on both sides at once and
 * the two buffers compared byte for byte (Buffer.equals, which beats hashing when both sides are
 * read by the same thread); an extent that differs is searched granule by granule, so only the
 * granules that differ are reported. The extents of a batch run in order, so the kernel's
 * readahead serves a file's next read. Runs on whatever thread owns the devices: a verify worker,
 * or the coordinator itself for NBD exports (see job/connectionPlan.ts).
 */
export class ExtentComparer {
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  readonly #sourceBuffers: BufferPool;
  readonly #targetBuffers: BufferPool;

  constructor(source: BlockDevice, target: BlockDevice) {
    this.source = source;
    this.target = target;
    this.#sourceBuffers = new BufferPool((n) => source.allocBuffer(n));
    this.#targetBuffers = new BufferPool((n) => target.allocBuffer(n));
  }

  async compare(task: VerifyTask): Promise<VerifyTaskResult> {
    const differing: number[] = [];
    const failures: VerifyFailure[] = [];
    for (let index = 0; 2 * index < task.extents.length; index++) {
      await this.#compareOne(task, index, differing, failures);
    }
    return { differing, failures };
  }

  async #compareOne(task: VerifyTask, index: number, differing: number[], failures: VerifyFailure[]): Promise<void> {
    const offset = task.extents[2 * index]!;
    const length = task.extents[2 * index + 1]!;
    const [a, b] = await Promise.all([this.#sourceBuffers.take(length), this.#targetBuffers.take(length)]);
    try {
      const reads = await Promise.allSettled([this.source.read(a, offset), this.target.read(b, offset)]);
      const failed = reads.findIndex((r) => r.status === 'rejected');
      if (failed >= 0) {
        const err = (reads[failed] as PromiseRejectedResult).reason as unknown;
        failures.push({ index, side: failed === 0 ? 'source' : 'target', errno: errnoOf(err), message: err instanceof Error ? err.message : String(err) });
        return;
      }
      if (a.equals(b)) return;
      const g = task.granularity;
      const end = offset + length;
      // Granule boundaries are absolute (multiples of g), whatever the extent's own alignment.
      for (let at = offset; at < end; ) {
        const next = Math.min(end, (Math.floor(at / g) + 1) * g);
        if (!a.subarray(at - offset, next - offset).equals(b.subarray(at - offset, next - offset))) {
          const last = differing.length - 2;
          if (last >= 0 && differing[last]! + differing[last + 1]! === at) differing[last + 1] = differing[last + 1]! + next - at;
          else differing.push(at, next - at);
        }
        at = next;
      }
    } finally {
      this.#sourceBuffers.give(a);
      this.#targetBuffers.give(b);
    }
  }
}

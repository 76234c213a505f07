/**
 * The worker side of the copy pool (a piscina worker module). Each worker thread keeps its own
 * open devices and reusable buffers, and copies the extents of a task concurrently:
 * pread source → zero check → pwrite target.
 */
import { performance } from 'node:perf_hooks';
import { errnoOf } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { openDevice } from '../io/openDevice.js';
import { isAllZero } from '../util/zero.js';
import { BufferPool } from './BufferPool.js';
import type { CopyFailure, CopyTask, CopyTaskResult } from './CopyTask.js';

/** Devices this thread has open, by spec. Opened once, kept for the life of the worker. */
const devices = new Map<string, Promise<BlockDevice>>();
/** One pool per (source, target) pair: buffers are aligned for whichever of the two needs it. */
const pools = new Map<string, BufferPool>();

function deviceFor(spec: DeviceSpec): Promise<BlockDevice> {
  const key = JSON.stringify(spec);
  let dev = devices.get(key);
  if (!dev) {
    dev = openDevice(spec);
    dev.catch(() => devices.delete(key)); // let a later task try again
    devices.set(key, dev);
  }
  return dev;
}

function poolFor(task: CopyTask, source: BlockDevice, target: BlockDevice): BufferPool {
  const key = JSON.stringify([task.source, task.target]);
  let pool = pools.get(key);
  if (!pool) {
    const aligner = task.source.kind === 'file' && task.source.direct ? source : target;
    pool = new BufferPool((bytes) => aligner.allocBuffer(bytes));
    pools.set(key, pool);
  }
  return pool;
}

interface Totals {
  bytesWritten: number;
  bytesZero: number;
}

export default async function copyExtents(task: CopyTask): Promise<CopyTaskResult> {
  const [source, target] = await Promise.all([deviceFor(task.source), deviceFor(task.target)]);
  const pool = poolFor(task, source, target);
  const count = task.extents.length / 2;
  const readMicros = new Float64Array(count).fill(NaN);
  const writeMicros = new Float64Array(count).fill(NaN);
  const failures: CopyFailure[] = [];
  const totals: Totals = { bytesWritten: 0, bytesZero: 0 };

  const copyOne = async (index: number): Promise<void> => {
    const offset = task.extents[2 * index]!;
    const length = task.extents[2 * index + 1]!;
    const buf = await pool.take(length);
    let operation: CopyFailure['operation'] = 'read';
    try {
      const t0 = performance.now();
      await source.read(buf, offset);
      const t1 = performance.now();
      readMicros[index] = (t1 - t0) * 1000;
      operation = 'write';
      if (task.detectZeroes && isAllZero(buf)) {
        totals.bytesZero += length;
        if (!task.targetIsZero) {
          // Not `totals.bytesWritten += await ...`: that reads the total before the await and loses concurrent updates.
          const written = await zeroTarget(target, buf, offset, pool);
          totals.bytesWritten += written;
        }
      } else {
        await target.write(buf, offset);
        totals.bytesWritten += length;
      }
      writeMicros[index] = (performance.now() - t1) * 1000;
    } catch (err) {
      failures.push({ index, operation, errno: errnoOf(err), message: err instanceof Error ? err.message : String(err) });
    } finally {
      pool.give(buf);
    }
  };

  const work: Promise<void>[] = [];
  for (let i = 0; i < count; i++) work.push(copyOne(i));
  await Promise.all(work);
  return { bytesWritten: totals.bytesWritten, bytesZero: totals.bytesZero, readMicros, writeMicros, failures };
}

/**
 * Makes the target read as zeros over a zero chunk, writing as little as possible: NBD zeroes
 * without data; a file is read first, and written only where it is not zero already (a hole
 * reads fast and stays a hole). Returns the bytes written.
 */
async function zeroTarget(target: BlockDevice, zeros: Buffer, offset: number, pool: BufferPool): Promise<number> {
  if (target.efficientZeroes) {
    await target.writeZeroes(offset, zeros.length);
    return zeros.length;
  }
  const current = await pool.take(zeros.length);
  try {
    await target.read(current, offset);
    if (isAllZero(current)) return 0;
  } finally {
    pool.give(current);
  }
  await target.write(zeros, offset);
  return zeros.length;
}

import { describe, expect, it } from 'vitest';
import { ExtentCopier } from '../../src/workers/ExtentCopier.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';

const KiB = 1024;

/** A source that records the order of its reads and how many overlap. */
class TracingSource extends MemoryDevice {
  readonly order: number[] = [];
  maxConcurrent = 0;
  #concurrent = 0;
  override async read(buf: Uint8Array, offset: number): Promise<void> {
    this.order.push(offset);
    this.maxConcurrent = Math.max(this.maxConcurrent, ++this.#concurrent);
    await new Promise((r) => setImmediate(r));
    await super.read(buf, offset);
    this.#concurrent--;
  }
}

function filled(size: number): TracingSource {
  const source = new TracingSource(size);
  for (let i = 0; i < size; i++) source.data[i] = (i * 7 + 3) & 0xff;
  return source;
}

const extents = [0, 16 * KiB, 16 * KiB, 16 * KiB, 32 * KiB, 16 * KiB, 48 * KiB, 16 * KiB];

describe('ExtentCopier', () => {
  it('copies the extents of a sequential task one at a time, in order', async () => {
    const source = filled(64 * KiB);
    const target = new MemoryDevice(64 * KiB);
    const result = await new ExtentCopier(source, target, false).copy({ extents, detectZeroes: true, targetIsZero: false, sequential: true });
    expect(result.failures).toEqual([]);
    expect(source.order).toEqual([0, 16 * KiB, 32 * KiB, 48 * KiB]);
    expect(source.maxConcurrent).toBe(1);
    expect(target.data.equals(source.data)).toBe(true);
  });

  it('copies the extents of an ordinary task concurrently', async () => {
    const source = filled(64 * KiB);
    const target = new MemoryDevice(64 * KiB);
    await new ExtentCopier(source, target, false).copy({ extents, detectZeroes: true, targetIsZero: false });
    expect(source.maxConcurrent).toBe(4);
    expect(target.data.equals(source.data)).toBe(true);
  });
});

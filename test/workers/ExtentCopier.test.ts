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

/** A target that records each write and zeroing, as [offset, length]. */
class RecordingTarget extends MemoryDevice {
  readonly writes: Array<[number, number]> = [];
  readonly zeroed: Array<[number, number]> = [];
  override async write(data: Uint8Array, offset: number): Promise<void> {
    this.writes.push([offset, data.length]);
    await super.write(data, offset);
  }
  override async writeZeroes(offset: number, length: number): Promise<void> {
    this.zeroed.push([offset, length]);
    await super.writeZeroes(offset, length);
  }
}

/** A 64 KiB source whose 16 KiB pieces are data or zero as `pattern` says (D: data, 0: zero). */
function patterned(pattern: string): TracingSource {
  const source = filled(64 * KiB);
  [...pattern].forEach((c, i) => c === '0' && source.data.fill(0, i * 16 * KiB, (i + 1) * 16 * KiB));
  return source;
}

describe('ExtentCopier', () => {
  it('finds zeros at the zero granule inside a larger extent, writing each run of data as one request', async () => {
    const source = patterned('D00D');
    const target = new RecordingTarget(64 * KiB);
    const result = await new ExtentCopier(source, target, false).copy({ extents: [0, 64 * KiB], detectZeroes: true, targetIsZero: true, zeroGranule: 16 * KiB });
    expect(target.writes).toEqual([
      [0, 16 * KiB],
      [48 * KiB, 16 * KiB],
    ]);
    expect(result).toMatchObject({ bytesWritten: 32 * KiB, bytesZero: 32 * KiB });
    expect(target.data.equals(source.data)).toBe(true);
  });

  it('zeroes a run of zero granules on a target not known to be zero, in one request', async () => {
    const source = patterned('DD00');
    const target = new RecordingTarget(64 * KiB);
    target.data.fill(0xee);
    await new ExtentCopier(source, target, false).copy({ extents: [0, 64 * KiB], detectZeroes: true, targetIsZero: false, zeroGranule: 16 * KiB });
    expect(target.writes).toEqual([[0, 32 * KiB]]);
    expect(target.zeroed).toEqual([[32 * KiB, 32 * KiB]]);
    expect(target.data.equals(source.data)).toBe(true);
  });

  it('stops a stream asked to stop at zeros after its first all-zero extent, and says where', async () => {
    const source = patterned('D0D0');
    const target = new MemoryDevice(64 * KiB);
    const result = await new ExtentCopier(source, target, false).copy({ extents, detectZeroes: true, targetIsZero: true, sequential: true, stopAtZero: true });
    expect(result.stoppedAt).toBe(2);
    expect(source.order).toEqual([0, 16 * KiB]);
    expect(target.data.subarray(0, 32 * KiB).equals(source.data.subarray(0, 32 * KiB))).toBe(true);
  });

  it('stops a stream asked to stop at data after its first extent that holds data, and says so', async () => {
    const source = patterned('00D0');
    const target = new MemoryDevice(64 * KiB);
    const result = await new ExtentCopier(source, target, false).copy({ extents, detectZeroes: true, targetIsZero: true, sequential: true, stopAtData: true });
    expect(result).toMatchObject({ stoppedAt: 3, stoppedAtData: true, bytesWritten: 16 * KiB, bytesZero: 32 * KiB });
    expect(source.order).toEqual([0, 16 * KiB, 32 * KiB]);
    expect(target.data.subarray(32 * KiB, 48 * KiB).equals(source.data.subarray(32 * KiB, 48 * KiB))).toBe(true);
  });

  it('stops a sequential task at its next extent once its cancel flag is set, and says where', async () => {
    const source = filled(64 * KiB);
    const target = new MemoryDevice(64 * KiB);
    const cancel = new Int32Array(new SharedArrayBuffer(4));
    const reads: number[] = [];
    const original = source.read.bind(source);
    source.read = async (buf, offset) => {
      reads.push(offset);
      if (offset === 16 * KiB) Atomics.store(cancel, 0, 1); // set while the second extent is read
      await original(buf, offset);
    };
    const result = await new ExtentCopier(source, target, false).copy({ extents, detectZeroes: true, targetIsZero: false, sequential: true, cancel });
    expect(result.stoppedAt).toBe(2);
    expect(reads).toEqual([0, 16 * KiB]);
    expect(target.data.subarray(0, 32 * KiB).equals(source.data.subarray(0, 32 * KiB))).toBe(true);
    expect(target.data.subarray(32 * KiB).every((b) => b === 0)).toBe(true);
  });

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

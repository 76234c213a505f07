import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/index.js';
import { RangeLocks } from '../../src/job/RangeLocks.js';
import { TrackedDevice, type CopyMode } from '../../src/job/TrackedDevice.js';
import { WriterGate } from '../../src/job/WriterGate.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';

const G = 4096;
const SIZE = 64 * G;

function setup(copyMode: CopyMode) {
  const source = new MemoryDevice(SIZE);
  const target = new MemoryDevice(SIZE);
  const bitmap = DirtyBitmap.create(SIZE, G);
  const locks = new RangeLocks();
  const listener = { onDirtied: () => {}, onTargetWriteError: () => {} };
  const device = new TrackedDevice({ source, target, bitmap, gate: WriterGate.create(), locks, listener, copyMode });
  return { source, target, bitmap, locks, device };
}

const filled = (length: number, byte: number): Buffer => Buffer.alloc(length, byte);

describe('TrackedDevice in write-blocking mode', () => {
  it('writes source and target when a granule it touches is clean, and clears the granules it covers whole', async () => {
    const { source, target, bitmap, device } = setup('write-blocking');
    bitmap.mark(3 * G, G); // dirty, and covered whole by the write below
    await device.write(filled(3 * G, 0xaa), 2 * G);
    expect(source.data.subarray(2 * G, 5 * G).equals(filled(3 * G, 0xaa))).toBe(true);
    expect(target.data.subarray(2 * G, 5 * G).equals(filled(3 * G, 0xaa))).toBe(true);
    expect(bitmap.count()).toBe(0);
  });

  it('writes only the source when every granule it touches is still dirty, and leaves them dirty for the copier', async () => {
    const { source, target, bitmap, device } = setup('write-blocking');
    bitmap.mark(4 * G, 2 * G);
    await device.write(filled(G + 100, 0xbb), 4 * G + 50);
    expect(source.data.subarray(4 * G + 50, 5 * G + 150).equals(filled(G + 100, 0xbb))).toBe(true);
    expect(target.data.subarray(4 * G, 6 * G).equals(Buffer.alloc(2 * G))).toBe(true);
    expect(bitmap.allDirty(4 * G, 2 * G)).toBe(true);
    expect(bitmap.count()).toBe(2);
  });

  it('waits for a copy of dirty granules in flight, then writes both sides, since the copy cleared them', async () => {
    const { source, target, bitmap, locks, device } = setup('write-blocking');
    bitmap.mark(8 * G, G);
    // A copier holds the extent and has cleared its bit before reading (invariant 2).
    const release = locks.tryHoldCopy(8 * G, 9 * G)!;
    bitmap.testAndClear(8, 1);
    let done = false;
    const write = device.write(filled(100, 0xcc), 8 * G).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    release();
    await write;
    expect(source.data.subarray(8 * G, 8 * G + 100).equals(filled(100, 0xcc))).toBe(true);
    expect(target.data.subarray(8 * G, 8 * G + 100).equals(filled(100, 0xcc))).toBe(true);
    expect(bitmap.count()).toBe(0);
  });

  it('keeps the granules of a failed source-only write dirty', async () => {
    const { source, bitmap, device } = setup('write-blocking');
    bitmap.mark(10 * G, G);
    source.write = async () => {
      throw new Error('EIO');
    };
    await expect(device.write(filled(10, 1), 10 * G)).rejects.toThrow('EIO');
    expect(bitmap.allDirty(10 * G, G)).toBe(true);
  });
});

describe('TrackedDevice in background mode', () => {
  it('writes only the source and marks what it touched', async () => {
    const { target, bitmap, device } = setup('background');
    await device.write(filled(G, 0xdd), 20 * G + 10);
    expect(target.data.subarray(20 * G, 22 * G).equals(Buffer.alloc(2 * G))).toBe(true);
    expect(bitmap.allDirty(20 * G, 2 * G)).toBe(true);
    expect(bitmap.count()).toBe(2);
  });
});

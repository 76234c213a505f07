import { describe, expect, it } from 'vitest';
import { ReplicaDevice, type DiskWriteObserver } from '../../src/replica/ReplicaDevice.js';
import { useScratchDir } from '../helpers/scratch.js';
import { contentsOf, HookedDevice, latch, newBuffer, randomDisk, settle, until } from './replicaKit.js';

const scratch = useScratchDir();
const G = 64 << 10;

describe('ReplicaDevice', () => {
  it('passes reads through and saves the old contents before a write, a write-zeroes and a discard', async () => {
    const dir = await scratch();
    const { device: disk, path, contents } = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, disk, G);
    const replica = new ReplicaDevice(disk, buffer);

    const read = Buffer.alloc(100);
    await replica.read(read, 5 * G);
    expect(read.equals(contents.subarray(5 * G, 5 * G + 100))).toBe(true);
    expect(buffer.savedGranules).toBe(0);

    await replica.write(Buffer.alloc(4096, 1), 1 * G);
    await replica.writeZeroes(3 * G + 10, 2 * G);
    await replica.discard(8 * G, 4096);
    expect(buffer.saved()).toEqual([1, 3, 4, 5, 8]);
    expect(replica.counts).toEqual({ writes: 3, bytes: 4096 + 2 * G + 4096 });

    await buffer.restore();
    expect((await contentsOf(path)).equals(contents)).toBe(true);
  });

  it('passes writes straight through once failed over: nothing more is saved', async () => {
    const dir = await scratch();
    const { device: disk, path } = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, disk, G);
    const replica = new ReplicaDevice(disk, buffer);
    replica.passThrough();

    await replica.write(Buffer.alloc(4096, 9), 2 * G);
    expect(replica.mode).toBe('pass-through');
    expect(buffer.savedGranules).toBe(0);
    expect((await contentsOf(path)).subarray(2 * G, 2 * G + 4096).equals(Buffer.alloc(4096, 9))).toBe(true);
  });

  it('runs an exclusive section only once the writes in flight are done, and holds new writes until it ends', async () => {
    const dir = await scratch();
    const { device } = await randomDisk(dir, 16 * G);
    const slow = latch();
    const disk = new HookedDevice(device, { beforeWrite: (_o, _l, n) => (n === 1 ? slow.promise : undefined) });
    const buffer = await newBuffer(dir, disk, G);
    const replica = new ReplicaDevice(disk, buffer);

    const inFlight = replica.write(Buffer.alloc(4096, 1), 0);
    await until(() => disk.writes.length === 1, 'the first write to reach the disk');
    let ranWithWritesInFlight: boolean | undefined;
    let held: Promise<void> | undefined;
    const section = replica.exclusive(async () => {
      ranWithWritesInFlight = disk.writes.length > 1;
      held = replica.write(Buffer.alloc(4096, 2), 4 * G);
      await settle();
      return disk.writes.length;
    });
    await settle();
    expect(ranWithWritesInFlight).toBeUndefined();
    slow.open();
    await inFlight;
    expect(await section).toBe(1);
    expect(ranWithWritesInFlight).toBe(false);
    await held;
    expect(disk.writes).toHaveLength(2);
  });

  it('makes a write held by a failover pass through, unsaved', async () => {
    const dir = await scratch();
    const { device: disk } = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, disk, G);
    const replica = new ReplicaDevice(disk, buffer);

    let held: Promise<void> | undefined;
    await replica.exclusive(async () => {
      held = replica.write(Buffer.alloc(4096, 3), 6 * G);
      await settle();
      replica.passThrough();
    });
    await held;
    expect(buffer.savedGranules).toBe(0);
  });

  it('has every write wait for the observer (a drill) as well as the buffer before it reaches the disk', async () => {
    const dir = await scratch();
    const { device } = await randomDisk(dir, 16 * G);
    const disk = new HookedDevice(device);
    const buffer = await newBuffer(dir, disk, G);
    const replica = new ReplicaDevice(disk, buffer);
    const gate = latch();
    const seen: Array<[number, number]> = [];
    const observer: DiskWriteObserver = {
      beforeDiskWrite: async (offset, length) => {
        seen.push([offset, length]);
        await gate.promise;
      },
    };
    await replica.exclusive(async () => replica.setObserver(observer));

    const write = replica.write(Buffer.alloc(4096, 4), 7 * G);
    await until(() => buffer.isSaved(7), 'the checkpoint buffer to save granule 7');
    await settle();
    expect(seen).toEqual([[7 * G, 4096]]);
    expect(disk.writes).toHaveLength(0);
    gate.open();
    await write;
    expect(disk.writes).toHaveLength(1);
  });
});

import { realpath, stat } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { checkGranularity } from '../../src/replica/CheckpointBuffer.js';
import { readActivityLog } from '../../src/state/ActivityLogFile.js';
import { seededRandom } from '../helpers/random.js';
import { useScratchDir } from '../helpers/scratch.js';
import {
  bufferFile,
  bufferPaths,
  contentsOf,
  HookedDevice,
  latch,
  newBuffer,
  randomDisk,
  recoverBuffer,
  recordGranules,
  settle,
  traceFileSyscalls,
  until,
  writeThrough,
} from './replicaKit.js';

const scratch = useScratchDir();
const G = 64 << 10;

describe('CheckpointBuffer: copy-before-write', () => {
  it("makes a granule's old contents durable, then its record durable, before the write over it is issued", async () => {
    const dir = await realpath(await scratch());
    const disk = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, disk.device, G);
    const { buffer: bufferPath, log: logPath } = bufferPaths(dir);
    const calls = await traceFileSyscalls();

    await writeThrough(buffer, disk.device, Buffer.alloc(4096, 0xaa), G + 1000);

    const diskWrite = calls.findIndex((c) => c.op === 'write' && c.path === disk.path && c.position === G + 1000);
    const savedData = calls.findIndex((c) => c.op === 'write' && c.path === bufferPath && c.position === G);
    const bufferSync = calls.findIndex((c, i) => i > savedData && c.op === 'datasync' && c.path === bufferPath);
    const record = calls.findIndex((c, i) => i > bufferSync && c.op === 'write' && c.path === logPath && recordGranules(c.data)?.includes(1));
    const recordSync = calls.findIndex((c, i) => i > record && c.op === 'datasync' && c.path === logPath);
    expect(calls[savedData]!.data).toEqual(disk.contents.subarray(G, 2 * G));
    expect([savedData, bufferSync, record, recordSync].every((i) => i >= 0)).toBe(true);
    expect(recordSync).toBeLessThan(diskWrite);
  });

  it("in 'process' durability, issues no fdatasync on the write path, yet writes the old contents, then the record, before the write over the granule is issued", async () => {
    const dir = await realpath(await scratch());
    const disk = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, disk.device, G, undefined, 'process');
    const { buffer: bufferPath, log: logPath } = bufferPaths(dir);
    const calls = await traceFileSyscalls();

    await writeThrough(buffer, disk.device, Buffer.alloc(4096, 0xaa), G + 1000);

    const savedData = calls.findIndex((c) => c.op === 'write' && c.path === bufferPath && c.position === G);
    const record = calls.findIndex((c) => c.op === 'write' && c.path === logPath && recordGranules(c.data)?.includes(1));
    const diskWrite = calls.findIndex((c) => c.op === 'write' && c.path === disk.path && c.position === G + 1000);
    expect(calls[savedData]!.data).toEqual(disk.contents.subarray(G, 2 * G));
    expect(savedData).toBeGreaterThanOrEqual(0);
    expect(record).toBeGreaterThan(savedData);
    expect(diskWrite).toBeGreaterThan(record);
    expect(calls.filter((c) => c.op === 'datasync' || c.op === 'sync')).toEqual([]);
  });

  it("in 'process' durability, still fdatasyncs the disk and replaces the log durably at a checkpoint", async () => {
    const dir = await realpath(await scratch());
    const disk = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, disk.device, G, undefined, 'process');
    await writeThrough(buffer, disk.device, Buffer.alloc(4096, 0xaa), 0);
    const calls = await traceFileSyscalls();

    await buffer.checkpoint(1);

    const diskSync = calls.findIndex((c) => c.op === 'datasync' && c.path === disk.path);
    const newLogSync = calls.findIndex((c) => c.op === 'sync' && c.path.startsWith(dir) && c.path.includes('replica-log'));
    expect(diskSync).toBeGreaterThanOrEqual(0);
    expect(newLogSync).toBeGreaterThan(diskSync);
  });

  it('saves a granule once per interval: later writes to it read and write nothing more, until the next checkpoint', async () => {
    const dir = await scratch();
    const { device } = await randomDisk(dir, 16 * G);
    const disk = new HookedDevice(device);
    const buffer = await newBuffer(dir, disk, G);

    await writeThrough(buffer, disk, Buffer.alloc(4096, 1), 3 * G);
    await writeThrough(buffer, disk, Buffer.alloc(4096, 2), 3 * G + 8192);
    await writeThrough(buffer, disk, Buffer.alloc(4096, 3), 3 * G);
    expect(disk.reads).toHaveLength(1);
    expect(buffer.commits).toBe(1);

    await buffer.checkpoint(1);
    await writeThrough(buffer, disk, Buffer.alloc(4096, 4), 3 * G);
    expect(disk.reads).toHaveLength(2);
  });

  it('lets a second write to a granule being saved wait for that save: the disk is read once, before either write', async () => {
    const dir = await scratch();
    const { device, path, contents } = await randomDisk(dir, 16 * G);
    const firstRead = latch();
    const firstWritten = latch();
    const disk = new HookedDevice(device, {
      // The first save's read is held until both writes have arrived; any later read of the disk
      // waits until the first write landed, so a second save would copy new data.
      beforeRead: (_o, _l, n) => (n === 1 ? firstRead.promise : firstWritten.promise),
      beforeWrite: () => firstWritten.open(),
    });
    const buffer = await newBuffer(dir, disk, G);

    const w1 = writeThrough(buffer, disk, Buffer.alloc(4096, 0x11), 5 * G);
    const w2 = writeThrough(buffer, disk, Buffer.alloc(4096, 0x22), 5 * G + 4096);
    await settle();
    firstRead.open();
    await Promise.all([w1, w2]);

    expect(disk.reads).toHaveLength(1);
    await buffer.restore();
    expect((await contentsOf(path)).equals(contents)).toBe(true);
  });

  it('makes saves that arrive during a commit share the next one: one fdatasync and one log record for all of them', async () => {
    const dir = await scratch();
    const { device } = await randomDisk(dir, 16 * G);
    const firstSync = latch();
    const file = new HookedDevice(await bufferFile(bufferPaths(dir).buffer), { beforeFlush: (n) => (n === 2 ? firstSync.promise : undefined) });
    const buffer = await newBuffer(dir, device, G, file);
    const flushesAtStart = file.flushes; // emptying the new buffer file syncs once

    const first = writeThrough(buffer, device, Buffer.alloc(4096, 1), 0);
    await until(() => file.flushes > flushesAtStart, 'the first commit');
    const rest = Array.from({ length: 15 }, (_, i) => writeThrough(buffer, device, Buffer.alloc(4096, 2), (i + 1) * G));
    await until(() => file.writes.length === 16, 'every save to reach the buffer file');
    firstSync.open();
    await Promise.all([first, ...rest]);

    expect(file.flushes - flushesAtStart).toBe(2);
    expect(buffer.commits).toBe(2);
    const log = await readActivityLog(bufferPaths(dir).log);
    expect(log.records).toBe(3); // the snapshot, then one record per commit
    expect(log.extents).toEqual(Array.from({ length: 16 }, (_, i) => i));
  });

  it('handles writes at any offset and length by whole granules, the short last granule too', async () => {
    const dir = await scratch();
    const size = 4 * G + 1234;
    const { device, path, contents } = await randomDisk(dir, size);
    const buffer = await newBuffer(dir, device, G);

    await writeThrough(buffer, device, Buffer.alloc(3, 7), G - 1); // granules 0 and 1
    await writeThrough(buffer, device, Buffer.alloc(1000, 8), size - 1000); // the short granule 4
    expect(buffer.saved()).toEqual([0, 1, 4]);
    expect(buffer.bufferBytes).toBe(2 * G + 1234);

    await buffer.restore();
    expect((await contentsOf(path)).equals(contents)).toBe(true);
  });

  it('fails the writes whose commit failed without issuing them, and takes no new save until the next interval', async () => {
    const dir = await scratch();
    const { device, path, contents } = await randomDisk(dir, 16 * G);
    let failSync = false;
    const file = new HookedDevice(await bufferFile(bufferPaths(dir).buffer), {
      beforeFlush: () => {
        if (failSync) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      },
    });
    const buffer = await newBuffer(dir, device, G, file);
    await writeThrough(buffer, device, Buffer.alloc(4096, 1), 0);

    failSync = true;
    await expect(writeThrough(buffer, device, Buffer.alloc(4096, 2), G)).rejects.toMatchObject({ code: ErrorCode.IO });
    failSync = false;
    expect((await contentsOf(path)).subarray(G, 2 * G).equals(contents.subarray(G, 2 * G))).toBe(true);
    await writeThrough(buffer, device, Buffer.alloc(4096, 3), 100); // granule 0 is saved already
    await expect(buffer.preserve(2 * G, 4096)).rejects.toMatchObject({ code: ErrorCode.IO });

    await buffer.checkpoint(1);
    await writeThrough(buffer, device, Buffer.alloc(4096, 4), 2 * G);
    expect(buffer.saved()).toEqual([2]);
  });

  it('takes a granularity that is a power of two from 4 KiB to 64 MiB, and nothing else', () => {
    expect(checkGranularity(4096)).toBe(4096);
    expect(checkGranularity(64 << 20)).toBe(64 << 20);
    for (const bad of [0, 2048, 3 << 12, 128 << 20, 1.5, Number.NaN]) {
      expect(() => checkGranularity(bad)).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_OPTION }));
    }
  });
});

describe('CheckpointBuffer: crashes, checkpoints and restores', () => {
  it('recovers exactly the durably saved granules after a crash, and restore then brings back the checkpoint', async () => {
    const dir = await scratch();
    const { device, path, contents } = await randomDisk(dir, 16 * G);
    const stuck = latch(); // never opened: the commit of granule 9 is in progress when the process "dies"
    const file = new HookedDevice(await bufferFile(bufferPaths(dir).buffer));
    const buffer = await newBuffer(dir, device, G, file);
    for (const g of [0, 3, 7, 15]) await writeThrough(buffer, device, Buffer.alloc(5000, g + 1), g * G + 100);
    file.hooks = { beforeFlush: () => stuck.promise };
    const lost = writeThrough(buffer, device, Buffer.alloc(4096, 0x99), 9 * G);
    await settle();

    // A crash: the old object is abandoned with its handles; a new one reads what is on disk.
    const again = await recoverBuffer(dir, device, G);
    expect(again.saved()).toEqual([0, 3, 7, 15]);
    expect((await contentsOf(path)).subarray(9 * G, 10 * G).equals(contents.subarray(9 * G, 10 * G))).toBe(true);
    await again.restore();
    expect((await contentsOf(path)).equals(contents)).toBe(true);
    void lost.catch(() => {});
  });

  it('fdatasyncs the disk before a checkpoint commits; a crash before the commit keeps the old interval, which restores the old checkpoint', async () => {
    const dir = await scratch();
    const { device, path, contents } = await randomDisk(dir, 16 * G);
    const disk = new HookedDevice(device);
    const buffer = await newBuffer(dir, disk, G);
    await writeThrough(buffer, disk, Buffer.alloc(4096, 5), 2 * G);

    let flushedBeforeCommit = false;
    const crash = buffer.checkpoint(1, async () => {
      flushedBeforeCommit = disk.flushes > 0;
      throw new Error('killed just before the commit');
    });
    await expect(crash).rejects.toThrow('killed');
    expect(flushedBeforeCommit).toBe(true);

    const again = await recoverBuffer(dir, device, G);
    expect(again.interval).toBe(0);
    expect(again.saved()).toEqual([2]);
    await again.restore();
    expect((await contentsOf(path)).equals(contents)).toBe(true);
  });

  it('starts an empty interval at a checkpoint, with the buffer file emptied: restore then gives the new checkpoint, after a restart too', async () => {
    const dir = await scratch();
    const { device, path } = await randomDisk(dir, 16 * G);
    const buffer = await newBuffer(dir, device, G);
    await writeThrough(buffer, device, Buffer.alloc(G, 1), 4 * G);
    await buffer.checkpoint(1);
    expect(buffer.savedGranules).toBe(0);
    expect((await stat(bufferPaths(dir).buffer)).blocks).toBe(0);
    const atCheckpoint = await contentsOf(path);

    await writeThrough(buffer, device, Buffer.alloc(4096, 2), 4 * G);
    await writeThrough(buffer, device, Buffer.alloc(4096, 3), 11 * G);
    const again = await recoverBuffer(dir, device, G);
    expect(again.interval).toBe(1);
    expect(again.saved()).toEqual([4, 11]);
    await again.restore();
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(true);
  });

  it('restores the same contents when a restore cut short by a crash is run again after the restart', async () => {
    const dir = await scratch();
    const { device, path, contents } = await randomDisk(dir, 16 * G);
    const disk = new HookedDevice(device);
    const buffer = await newBuffer(dir, disk, G);
    for (const g of [1, 2, 5, 8, 13, 14]) await writeThrough(buffer, disk, Buffer.alloc(G, 0xee), g * G);
    const before = disk.writes.length;
    disk.hooks = {
      beforeWrite: (_o, _l, n) => {
        if (n > before + 2) throw new Error('killed during the restore');
      },
    };
    await expect(buffer.restore()).rejects.toThrow('killed');

    const again = await recoverBuffer(dir, device, G);
    expect(again.saved()).toEqual([1, 2, 5, 8, 13, 14]);
    const result = await again.restore();
    expect(result).toEqual({ granules: 6, bytes: 6 * G });
    expect((await contentsOf(path)).equals(contents)).toBe(true);
    expect(again.savedGranules).toBe(0);
  });

  it('restores the checkpoint byte for byte after many concurrent writers to overlapping granules at random offsets', async () => {
    const dir = await scratch();
    const g = 16 << 10;
    const size = 64 * g + 777;
    const random = seededRandom(20261207);
    const jitter = (): Promise<void> => new Promise((r) => (random() < 0.5 ? setImmediate(r) : setTimeout(r, Math.floor(random() * 3))));
    const { device, path } = await randomDisk(dir, size);
    const disk = new HookedDevice(device, { beforeRead: jitter, beforeWrite: jitter });
    const buffer = await newBuffer(dir, disk, g);
    const randomWrite = (): Promise<void> => {
      const offset = Math.floor(random() * size);
      const length = 1 + Math.floor(random() * Math.min(3 * g, size - offset));
      return writeThrough(buffer, disk, Buffer.alloc(length, Math.floor(random() * 256)), offset);
    };

    await Promise.all(Array.from({ length: 100 }, randomWrite));
    await buffer.checkpoint(1);
    const atCheckpoint = await contentsOf(path);
    await Promise.all(Array.from({ length: 300 }, randomWrite));
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(false);

    await buffer.restore();
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(true);
  });

  it('refuses a log of another geometry', async () => {
    const dir = await scratch();
    const { device } = await randomDisk(dir, 16 * G);
    await newBuffer(dir, device, G);
    await expect(recoverBuffer(dir, device, 2 * G)).rejects.toMatchObject({ code: ErrorCode.LOG_GEOMETRY });
  });
});

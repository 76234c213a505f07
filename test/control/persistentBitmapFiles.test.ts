/**
 * A persistent bitmap's files in the daemon (PersistentBitmapFiles, BlockNode's write path): a
 * write reaches the image only once every log of the bitmaps it will mark names its extent
 * durably, a write to a hot extent costs no record, a checkpoint lets an extent go cold once the
 * bitmap file holds its bits, a failure drops the log rather than let a write through unlogged,
 * and opening a saved bitmap trusts a log only when it is whole and the file's pair.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBitmap, readBitmapHeader, saveBitmap } from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { BlockNode, type NodeBitmap } from '../../src/control/BlockNode.js';
import { PersistentBitmapFiles, type BitmapFilesOptions } from '../../src/control/PersistentBitmapFiles.js';
import { DEFAULT_LOG_EXTENT_SIZE } from '../../src/state/ActivityLog.js';
import { parseActivityLog, readActivityLog, writeActivityLog } from '../../src/state/ActivityLogFile.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const MiB = 1 << 20;
const EXTENT = DEFAULT_LOG_EXTENT_SIZE;
const SIZE = 64 * MiB;
const scratch = useScratchDir();

/** Options that keep notices for the test to read, and checkpoints to the test's own calls. */
function quietOptions(notices: string[] = []): BitmapFilesOptions {
  return { describe: "'b' of disk", checkpointIntervalMs: 3_600_000, notice: (m) => notices.push(m) };
}

/** A file node on a device in memory. */
function nodeOn(device: MemoryDevice): BlockNode {
  return new BlockNode({ name: 'disk', driver: 'file', device, filename: 'memory', readOnly: false, direct: false, userCreated: true });
}

function attach(node: BlockNode, name: string, files: PersistentBitmapFiles): NodeBitmap {
  const b: NodeBitmap = { name, bitmap: files.bitmap, persistent: true, path: files.bitmapPath, files, recording: true, inconsistent: false };
  node.bitmaps.set(name, b);
  return b;
}

/** A device that, the moment each write arrives (synchronously), reads which extents the given logs name on disk. */
class LogWatchingDevice extends MemoryDevice {
  readonly seen: Array<{ offset: number; logged: number[][] }> = [];
  constructor(readonly logs: string[]) {
    super(SIZE);
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    const logged = this.logs.map((p) => [...parseActivityLog(readFileSync(p), p).extents]);
    this.seen.push({ offset, logged });
    await super.write(data, offset);
  }
}

describe('persistent bitmap files: the write path', () => {
  it('a write to a cold extent reaches the image only once the log names its extent durably', async () => {
    const dir = await scratch();
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const device = new LogWatchingDevice([files.logPath]);
    const node = nodeOn(device);
    attach(node, 'b', files);
    await node.write(Buffer.alloc(4096, 1), 5 * EXTENT + 100);
    expect(device.seen).toEqual([{ offset: 5 * EXTENT + 100, logged: [[5]] }]);
    await files.discard();
  });

  it('a write across an extent boundary is let through once both extents are logged', async () => {
    const dir = await scratch();
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const device = new LogWatchingDevice([files.logPath]);
    const node = nodeOn(device);
    attach(node, 'b', files);
    await node.write(Buffer.alloc(8192, 1), 2 * EXTENT - 4096);
    expect(device.seen[0]!.logged).toEqual([[1, 2]]);
    await files.discard();
  });

  it('a write that marks two persistent bitmaps is in both logs before it reaches the image', async () => {
    const dir = await scratch();
    const a = await PersistentBitmapFiles.create(join(dir, 'disk.a.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const b = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const device = new LogWatchingDevice([a.logPath, b.logPath]);
    const node = nodeOn(device);
    attach(node, 'a', a);
    attach(node, 'b', b);
    await node.write(Buffer.alloc(512, 1), 3 * EXTENT);
    expect(device.seen[0]!.logged).toEqual([[3], [3]]);
    expect([a.bitmap.isDirty(3 * EXTENT, 512), b.bitmap.isDirty(3 * EXTENT, 512)]).toEqual([true, true]);
    await Promise.all([a.discard(), b.discard()]);
  });

  it('writes to a hot extent append no record to the log', async () => {
    const dir = await scratch();
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const node = nodeOn(new MemoryDevice(SIZE));
    attach(node, 'b', files);
    await node.write(Buffer.alloc(512, 1), 0);
    const records = (await readActivityLog(files.logPath)).records;
    for (let i = 1; i <= 8; i++) await node.write(Buffer.alloc(512, 1), i * 64 * KiB);
    expect((await readActivityLog(files.logPath)).records).toBe(records);
    await files.discard();
  });

  it('a disabled bitmap is neither logged nor marked', async () => {
    const dir = await scratch();
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const node = nodeOn(new MemoryDevice(SIZE));
    attach(node, 'b', files).recording = false;
    await node.write(Buffer.alloc(512, 1), 7 * EXTENT);
    expect((await readActivityLog(files.logPath)).extents).toEqual([]);
    expect(files.bitmap.count()).toBe(0);
    await files.discard();
  });

  it('once written and marked, an extent goes cold at a checkpoint, and the bitmap file holds its bits', async () => {
    const dir = await scratch();
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const node = nodeOn(new MemoryDevice(SIZE));
    attach(node, 'b', files);
    await node.write(Buffer.alloc(4096, 1), 9 * EXTENT);
    // The first checkpoint saves the bits; the extent has then been idle a whole period and cools at the next.
    await files.checkpoint();
    await files.checkpoint();
    expect((await readActivityLog(files.logPath)).extents).toEqual([]);
    const saved = await loadBitmap(files.bitmapPath, { size: SIZE, trustInUse: true });
    expect([saved.header.inUse, saved.bitmap.allDirty(9 * EXTENT, 4096), saved.bitmap.dirtyBytes()]).toEqual([true, true, 64 * KiB]);
    await files.discard();
  });

  it('a failed checkpoint drops the log before any further write: writes go on, and a crash would load all dirty', async () => {
    const dir = await scratch();
    const notices: string[] = [];
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions(notices));
    const node = nodeOn(new MemoryDevice(SIZE));
    attach(node, 'b', files);
    await node.write(Buffer.alloc(512, 1), 0);
    // A directory where the bitmap file was: the save cannot rename over it.
    await rm(files.bitmapPath);
    await mkdir(files.bitmapPath);
    await writeFile(join(files.bitmapPath, 'x'), '');
    await files.checkpoint();
    expect(files.logged).toBe(false);
    expect((await readdir(dir)).filter((f) => f.endsWith('.alog'))).toEqual([]);
    expect(notices.join('\n')).toMatch(/activity log is dropped/);
    await node.write(Buffer.alloc(512, 1), 11 * EXTENT);
    expect(files.bitmap.isDirty(11 * EXTENT, 512)).toBe(true);
  });

  it('a clean close saves the bitmap without the in-use flag and deletes the log', async () => {
    const dir = await scratch();
    const files = await PersistentBitmapFiles.create(join(dir, 'disk.b.bmp'), DirtyBitmap.create(SIZE), quietOptions());
    const node = nodeOn(new MemoryDevice(SIZE));
    attach(node, 'b', files);
    await node.write(Buffer.alloc(512, 1), 2 * MiB);
    await files.closeClean();
    const saved = await loadBitmap(files.bitmapPath, { size: SIZE });
    expect([saved.consistent, saved.bitmap.dirtyBytes()]).toEqual([true, 64 * KiB]);
    expect(await readdir(dir)).toEqual(['disk.b.bmp']);
  });
});

describe('persistent bitmap files: opening a saved bitmap', () => {
  /** A bitmap file with bits at `marks`, saved as generation `generation`. */
  async function savedFile(path: string, o: { inUse: boolean; generation: number; marks: number[] }): Promise<void> {
    const bitmap = DirtyBitmap.create(SIZE);
    for (const at of o.marks) bitmap.mark(at, 512);
    await saveBitmap(path, bitmap, { inUse: o.inUse, generation: o.generation });
  }

  it('a file in use with its paired log loads consistent: the file bits with the log extents dirty', async () => {
    const dir = await scratch();
    const path = join(dir, 'disk.b.bmp');
    await savedFile(path, { inUse: true, generation: 7, marks: [MiB] });
    await writeActivityLog(PersistentBitmapFiles.logPathFor(path), { extentSize: EXTENT, size: SIZE, epoch: 7 }, [4, 9]);
    const { bitmap, consistent, files } = await PersistentBitmapFiles.open(path, SIZE, quietOptions());
    expect(consistent).toBe(true);
    expect([bitmap.isDirty(MiB, 512), bitmap.allDirty(4 * EXTENT, EXTENT), bitmap.allDirty(9 * EXTENT, EXTENT)]).toEqual([true, true, true]);
    expect(bitmap.dirtyBytes()).toBe(64 * KiB + 2 * EXTENT);
    await files.discard();
  });

  it('a log one generation behind its file (a crash inside a checkpoint) still counts', async () => {
    const dir = await scratch();
    const path = join(dir, 'disk.b.bmp');
    await savedFile(path, { inUse: true, generation: 7, marks: [] });
    await writeActivityLog(PersistentBitmapFiles.logPathFor(path), { extentSize: EXTENT, size: SIZE, epoch: 6 }, [2]);
    const { bitmap, consistent, files } = await PersistentBitmapFiles.open(path, SIZE, quietOptions());
    expect([consistent, bitmap.dirtyBytes()]).toEqual([true, EXTENT]);
    await files.discard();
  });

  it.each([
    ['ahead of its file', { extentSize: EXTENT, size: SIZE, epoch: 8 }, /generation 8.*generation 7/],
    ['from long before its file', { extentSize: EXTENT, size: SIZE, epoch: 2 }, /different moments/],
    ['for another image size', { extentSize: EXTENT, size: SIZE / 2, epoch: 7 }, /image of 33554432 bytes/],
  ])('a log %s loads all dirty and inconsistent, and says why', async (_what, header, why) => {
    const dir = await scratch();
    const path = join(dir, 'disk.b.bmp');
    const notices: string[] = [];
    await savedFile(path, { inUse: true, generation: 7, marks: [] });
    await writeActivityLog(PersistentBitmapFiles.logPathFor(path), header, [0]);
    const { bitmap, consistent, files } = await PersistentBitmapFiles.open(path, SIZE, quietOptions(notices));
    expect([consistent, bitmap.dirtyBytes()]).toEqual([false, SIZE]);
    expect(notices.join('\n')).toMatch(why);
    await files.discard();
  });

  it('after loading, the file holds what was loaded and a fresh log is its pair', async () => {
    const dir = await scratch();
    const path = join(dir, 'disk.b.bmp');
    await savedFile(path, { inUse: true, generation: 7, marks: [] });
    await writeActivityLog(PersistentBitmapFiles.logPathFor(path), { extentSize: EXTENT, size: SIZE, epoch: 7 }, [3]);
    const { files } = await PersistentBitmapFiles.open(path, SIZE, quietOptions());
    const saved = await loadBitmap(path, { size: SIZE, trustInUse: true });
    const log = await readActivityLog(files.logPath);
    expect([saved.header.inUse, saved.header.generation, saved.bitmap.dirtyBytes()]).toEqual([true, 8, EXTENT]);
    expect([log.header.epoch, log.extents]).toEqual([8, []]);
    await files.discard();
  });

  it('a clean file loads as saved, whatever log lies beside it, and is flagged in use', async () => {
    const dir = await scratch();
    const path = join(dir, 'disk.b.bmp');
    await savedFile(path, { inUse: false, generation: 4, marks: [5 * MiB] });
    await writeActivityLog(PersistentBitmapFiles.logPathFor(path), { extentSize: EXTENT, size: SIZE, epoch: 4 }, [0, 1, 2]);
    const { bitmap, consistent, files } = await PersistentBitmapFiles.open(path, SIZE, quietOptions());
    expect([consistent, bitmap.dirtyBytes()]).toEqual([true, 64 * KiB]);
    expect((await readBitmapHeader(path)).inUse).toBe(true);
    expect((await readActivityLog(files.logPath)).extents).toEqual([]);
    await files.discard();
  });
});

/**
 * Persistent bitmaps across a real kill -9 of a real `blockmirror daemon`: each has an activity
 * log beside its bitmap file, so after the crash it loads consistent (query-named-block-nodes
 * shows no `inconsistent`), with every range written before the crash dirty and little else.
 * A log that is missing, damaged or not the file's pair loads all dirty and inconsistent, as a
 * file of an older build does.
 */
import { readdir, readFile, truncate, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBitmap, readBitmapHeader, saveBitmap } from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { DEFAULT_LOG_EXTENT_SIZE } from '../../src/state/ActivityLog.js';
import { readActivityLog, writeActivityLog } from '../../src/state/ActivityLogFile.js';
import { useDaemons, type RunningDaemon } from '../helpers/daemon.js';
import { sparseFile } from '../helpers/files.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { useScratchDir } from '../helpers/scratch.js';
import { within } from '../helpers/within.js';

const KiB = 1024;
const MiB = 1 << 20;
const EXTENT = DEFAULT_LOG_EXTENT_SIZE;
const SIZE = 64 * MiB;
const scratch = useScratchDir();
const startDaemon = useDaemons();

interface BitmapInfo {
  name: string;
  count: number;
  inconsistent?: boolean;
}

interface Session {
  readonly d: RunningDaemon;
  readonly qmp: QmpClient;
  readonly nbd: NbdDevice;
}

async function start(dir: string, extra: string[] = []): Promise<Session> {
  const d = await startDaemon([
    '--blockdev', `driver=file,node-name=disk,filename=${join(dir, 'disk.img')}`,
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=disk,writable=on',
    '--qmp', join(dir, 'qmp.sock'),
    ...extra,
  ]);
  const qmp = await QmpClient.connect(d.qmp);
  const nbd = await NbdDevice.open({ kind: 'nbd', uri: `nbd+unix:///disk?socket=${join(dir, 'nbd.sock')}`, writable: true });
  return { d, qmp, nbd };
}

/** kill -9: nothing is saved, nothing closed. */
async function crash(s: Session): Promise<void> {
  s.d.child.kill('SIGKILL');
  await s.d.exited;
  await s.nbd.close().catch(() => undefined);
}

/** quit, then the bitmap file as saved clean. */
async function quitAndLoad(s: Session, file: string): Promise<DirtyBitmap> {
  await s.nbd.close();
  await s.qmp.execute('quit');
  expect(await s.d.exited).toBe(0);
  const saved = await loadBitmap(file, { size: SIZE });
  expect(saved.consistent).toBe(true);
  return saved.bitmap;
}

async function bitmapsOf(qmp: QmpClient): Promise<Record<string, BitmapInfo>> {
  const nodes = await qmp.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: BitmapInfo[] }>>('query-named-block-nodes');
  return Object.fromEntries((nodes.find((n) => n['node-name'] === 'disk')?.['dirty-bitmaps'] ?? []).map((b) => [b.name, b]));
}

/** Waits (for an event on disk, not for a time) until `ready` holds. */
async function until(what: string, ready: () => Promise<boolean>): Promise<void> {
  await within(20_000, what, (async () => {
    while (!(await ready())) await new Promise((r) => setTimeout(r, 10));
  })());
}

const WRITES: ReadonlyArray<readonly [offset: number, length: number]> = [
  [MiB + 100, 4096],
  [2 * EXTENT - 2048, 4096], // across the boundary of extents 1 and 2
  [10 * EXTENT + 12345, 100],
];
/** The extents those writes touch, as bytes: all a recovered bitmap may have dirty. */
const TOUCHED_BYTES = 4 * EXTENT;

describe('blockmirror daemon: persistent bitmaps after kill -9', () => {
  it('load consistent, with every range written before the crash dirty, far from all dirty', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    for (const [offset, length] of WRITES) await s.nbd.write(Buffer.alloc(length, 1), offset);
    await crash(s);

    s = await start(dir);
    const b = (await bitmapsOf(s.qmp)).b!;
    expect(b.inconsistent).toBeUndefined();
    expect(b.count).toBeLessThanOrEqual(TOUCHED_BYTES);
    expect(s.d.stderr()).toMatch(/'b' of disk .*recovered from its activity log/);
    const bitmap = await quitAndLoad(s, join(dir, 'disk.img.b.bmp'));
    for (const [offset, length] of WRITES) expect(bitmap.allDirty(offset, length)).toBe(true);
  });

  it('keep the bits a checkpoint saved after their extent has left the log', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    const file = join(dir, 'disk.img.b.bmp');
    let s = await start(dir, ['--bitmap-checkpoint-interval', '20']);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await s.nbd.write(Buffer.alloc(4096, 1), 3 * EXTENT);
    // Checkpoints run while the bitmap changes: writes elsewhere keep them coming until extent 3, idle, cools.
    await until('extent 3 cools', async () => {
      await s.nbd.write(Buffer.alloc(4096, 1), 12 * EXTENT);
      return !(await readActivityLog(join(dir, 'disk.img.b.alog'))).extents.includes(3);
    });
    await crash(s);

    s = await start(dir);
    const b = (await bitmapsOf(s.qmp)).b!;
    expect(b.inconsistent).toBeUndefined();
    expect(b.count).toBeLessThanOrEqual(64 * KiB + EXTENT);
    const bitmap = await quitAndLoad(s, file);
    expect([bitmap.allDirty(3 * EXTENT, 4096), bitmap.allDirty(12 * EXTENT, 4096)]).toEqual([true, true]);
  });

  it('keep the writes of each of a node’s bitmaps, each in its own log', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'a', persistent: true });
    await s.nbd.write(Buffer.alloc(4096, 1), 5 * EXTENT);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true, granularity: 4096 });
    await s.nbd.write(Buffer.alloc(4096, 1), 7 * EXTENT);
    expect((await readdir(dir)).filter((f) => f.endsWith('.alog')).sort()).toEqual(['disk.img.a.alog', 'disk.img.b.alog']);
    await crash(s);

    s = await start(dir);
    const info = await bitmapsOf(s.qmp);
    expect([info.a!.inconsistent, info.b!.inconsistent]).toEqual([undefined, undefined]);
    await s.nbd.close();
    await s.qmp.execute('quit');
    await s.d.exited;
    const a = (await loadBitmap(join(dir, 'disk.img.a.bmp'))).bitmap;
    const b = (await loadBitmap(join(dir, 'disk.img.b.bmp'))).bitmap;
    expect([a.allDirty(5 * EXTENT, 4096), a.allDirty(7 * EXTENT, 4096)]).toEqual([true, true]);
    expect([b.isDirty(5 * EXTENT, EXTENT), b.allDirty(7 * EXTENT, 4096)]).toEqual([false, true]);
  });

  it('keep the writes made while a mirror copies the node', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    await sparseFile(join(dir, 't.img'), SIZE);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await s.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 't', filename: join(dir, 't.img') });
    await s.qmp.execute('blockdev-mirror', { 'job-id': 'm', device: 'disk', target: 't', sync: 'full' });
    await s.qmp.waitEvent('BLOCK_JOB_READY');
    await s.nbd.write(Buffer.alloc(4096, 2), 6 * EXTENT + 512);
    await crash(s);

    s = await start(dir);
    expect((await bitmapsOf(s.qmp)).b!.inconsistent).toBeUndefined();
    const bitmap = await quitAndLoad(s, join(dir, 'disk.img.b.bmp'));
    expect(bitmap.allDirty(6 * EXTENT + 512, 4096)).toBe(true);
  });

  it('keep what a merge put into a bitmap, even once its source is removed', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'old', persistent: true });
    await s.nbd.write(Buffer.alloc(4096, 1), 9 * EXTENT);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'new', persistent: true });
    await s.qmp.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-merge', data: { node: 'disk', target: 'new', bitmaps: ['old'] } },
        { type: 'block-dirty-bitmap-remove', data: { node: 'disk', name: 'old' } },
      ],
    });
    await crash(s);

    s = await start(dir);
    expect(Object.keys(await bitmapsOf(s.qmp))).toEqual(['new']);
    const bitmap = await quitAndLoad(s, join(dir, 'disk.img.new.bmp'));
    expect(bitmap.allDirty(9 * EXTENT, 4096)).toBe(true);
  });

  it('keep a write made after block-dirty-bitmap-clear', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await s.nbd.write(Buffer.alloc(4096, 1), 0);
    await s.qmp.execute('block-dirty-bitmap-clear', { node: 'disk', name: 'b' });
    await s.nbd.write(Buffer.alloc(4096, 1), 14 * EXTENT);
    await crash(s);

    s = await start(dir);
    // A clear is undone by a crash at most within the log's extents: only more is dirty.
    expect((await bitmapsOf(s.qmp)).b).toMatchObject({ count: expect.any(Number) });
    const bitmap = await quitAndLoad(s, join(dir, 'disk.img.b.bmp'));
    expect(bitmap.allDirty(14 * EXTENT, 4096)).toBe(true);
    expect(bitmap.dirtyBytes()).toBeLessThanOrEqual(2 * EXTENT);
  });

  it('are logged again after loading all dirty: the next kill -9 loads consistent', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    await saveBitmap(join(dir, 'disk.img.b.bmp'), DirtyBitmap.create(SIZE), { inUse: true, generation: 3 });
    let s = await start(dir);
    expect((await bitmapsOf(s.qmp)).b).toMatchObject({ count: SIZE, inconsistent: true });
    await s.qmp.execute('block-dirty-bitmap-clear', { node: 'disk', name: 'b' });
    await s.nbd.write(Buffer.alloc(4096, 1), 4 * EXTENT);
    await crash(s);

    s = await start(dir);
    const b = (await bitmapsOf(s.qmp)).b!;
    expect(b.inconsistent).toBeUndefined();
    const bitmap = await quitAndLoad(s, join(dir, 'disk.img.b.bmp'));
    expect(bitmap.allDirty(4 * EXTENT, 4096)).toBe(true);
  });
});

describe('blockmirror daemon: persistent bitmaps whose log cannot vouch for them', () => {
  it('an in-use bitmap file without a log (an older build’s) loads all dirty and inconsistent, as before', async () => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    const bits = DirtyBitmap.create(SIZE);
    bits.mark(MiB, 4096);
    await saveBitmap(join(dir, 'disk.img.b.bmp'), bits, { inUse: true, generation: 5 });
    const s = await start(dir);
    expect((await bitmapsOf(s.qmp)).b).toMatchObject({ count: SIZE, inconsistent: true });
    expect(s.d.stderr()).toMatch(/'b' of disk was in use .*has no activity log.*all dirty and inconsistent/);
  });

  /** Each way a log may be unusable after a crash, applied to the log a killed daemon left. */
  const damages: ReadonlyArray<readonly [string, (log: string, generation: number) => Promise<void>, RegExp]> = [
    ['missing', (log) => unlink(log), /has no activity log/],
    ['empty', (log) => truncate(log, 0), /BM_ERR_LOG_EMPTY/],
    ['damaged', async (log) => {
      const b = await readFile(log);
      b[70]! ^= 0xff; // inside the snapshot record, which no append can tear
      await writeFile(log, b);
    }, /BM_ERR_LOG_CORRUPT/],
    ['of another image size', (log, generation) => writeActivityLog(log, { extentSize: EXTENT, size: SIZE / 2, epoch: generation }, []).then(() => undefined), /image of/],
    ['from another moment', (log, generation) => writeActivityLog(log, { extentSize: EXTENT, size: SIZE, epoch: generation + 2 }, []).then(() => undefined), /different moments/],
  ];

  it.each(damages)('a log %s loads all dirty and inconsistent, and the daemon says why', async (_what, damage, why) => {
    const dir = await scratch();
    await sparseFile(join(dir, 'disk.img'), SIZE);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await s.nbd.write(Buffer.alloc(4096, 1), 8 * EXTENT);
    await crash(s);
    const { generation } = await readBitmapHeader(join(dir, 'disk.img.b.bmp'));
    await damage(join(dir, 'disk.img.b.alog'), generation);

    s = await start(dir);
    expect((await bitmapsOf(s.qmp)).b).toMatchObject({ count: SIZE, inconsistent: true });
    expect(s.d.stderr()).toMatch(why);
  });
});

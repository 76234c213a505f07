/**
 * Dirty bitmaps over QMP: block-dirty-bitmap-add/remove/clear/enable/disable/merge, marked by
 * writes through the daemon's NBD export (also while a mirror runs, and on the target after its
 * pivot), persistent bitmaps saved next to the image or in --bitmap-dir across a restart and a
 * crash (persistentBitmapCrash.test.ts has the crash in detail), and an incremental mirror
 * (sync=bitmap) from one.
 */
import { copyFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBitmap, NbdDevice, readBitmapHeader } from '../../src/index.js';
import { useDaemons, type RunningDaemon } from '../helpers/daemon.js';
import { sparseFile, writeRandomFile } from '../helpers/files.js';
import { imagesIdentical } from '../helpers/peers.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const MiB = 1 << 20;
const scratch = useScratchDir();
const startDaemon = useDaemons();

interface BitmapInfo {
  name: string;
  recording: boolean;
  persistent: boolean;
  granularity: number;
  count: number;
  inconsistent?: boolean;
}

async function bitmapsOf(qmp: QmpClient, node: string): Promise<Record<string, BitmapInfo>> {
  const nodes = await qmp.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: BitmapInfo[] }>>('query-named-block-nodes');
  const n = nodes.find((x) => x['node-name'] === node);
  return Object.fromEntries((n?.['dirty-bitmaps'] ?? []).map((b) => [b.name, b]));
}

function daemonArgs(dir: string, extra: string[] = []): string[] {
  return [
    '--blockdev', `driver=file,node-name=disk,filename=${join(dir, 'disk.img')}`,
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=disk,writable=on',
    '--qmp', join(dir, 'qmp.sock'),
    ...extra,
  ];
}

async function start(dir: string, extra: string[] = []): Promise<{ d: RunningDaemon; qmp: QmpClient; nbd: NbdDevice }> {
  const d = await startDaemon(daemonArgs(dir, extra));
  const qmp = await QmpClient.connect(d.qmp);
  const nbd = await NbdDevice.open({ kind: 'nbd', uri: `nbd+unix:///disk?socket=${join(dir, 'nbd.sock')}`, writable: true });
  return { d, qmp, nbd };
}

async function quit(s: { d: RunningDaemon; qmp: QmpClient; nbd: NbdDevice }): Promise<void> {
  await s.nbd.close();
  await s.qmp.execute('quit');
  expect(await s.d.exited).toBe(0);
}

describe('blockmirror daemon: dirty bitmaps', () => {
  it('writes through the export mark recording bitmaps; clear, disable, enable, merge, remove', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'disk.img'), 8 * MiB);
    const s = await start(dir);
    const { qmp, nbd } = s;
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'a' });
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'fine', granularity: 4096 });
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'off', disabled: true });
    await nbd.write(Buffer.alloc(4096, 1), 100 * KiB); // one 64 KiB granule of 'a', one 4 KiB granule of 'fine'
    await nbd.writeZeroes(3 * MiB, 128 * KiB);
    let b = await bitmapsOf(qmp, 'disk');
    expect(b.a).toMatchObject({ recording: true, persistent: false, granularity: 65536, count: 64 * KiB + 128 * KiB });
    expect(b.fine!.count).toBe(4 * KiB + 128 * KiB);
    expect(b.off).toMatchObject({ recording: false, count: 0 });

    await qmp.execute('block-dirty-bitmap-enable', { node: 'disk', name: 'off' });
    await qmp.execute('block-dirty-bitmap-disable', { node: 'disk', name: 'a' });
    await nbd.write(Buffer.alloc(512, 2), 5 * MiB);
    b = await bitmapsOf(qmp, 'disk');
    expect(b.a!.count).toBe(192 * KiB);
    expect(b.off!.count).toBe(64 * KiB);

    // Merging bitmaps of other granularities goes by the byte ranges they mark.
    await qmp.execute('block-dirty-bitmap-merge', { node: 'disk', target: 'off', bitmaps: ['a', { node: 'disk', name: 'fine' }] });
    expect((await bitmapsOf(qmp, 'disk')).off!.count).toBe(64 * KiB + 192 * KiB);
    await qmp.execute('block-dirty-bitmap-clear', { node: 'disk', name: 'off' });
    expect((await bitmapsOf(qmp, 'disk')).off!.count).toBe(0);
    await qmp.execute('block-dirty-bitmap-remove', { node: 'disk', name: 'off' });
    expect(Object.keys(await bitmapsOf(qmp, 'disk'))).toEqual(['a', 'fine']);

    // A transaction: the new bitmap starts at the same instant the old one is cleared.
    await qmp.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-clear', data: { node: 'disk', name: 'fine' } },
        { type: 'block-dirty-bitmap-add', data: { node: 'disk', name: 'next' } },
      ],
    });
    b = await bitmapsOf(qmp, 'disk');
    expect([b.fine!.count, b.next!.count]).toEqual([0, 0]);
    await quit(s);
  });

  it('marks the source node while a mirror runs, and the target node after the pivot', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'disk.img'), 8 * MiB);
    await sparseFile(join(dir, 't.img'), 8 * MiB);
    const s = await start(dir);
    const { qmp, nbd } = s;
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 't', filename: join(dir, 't.img') });
    await qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'src-side' });
    await qmp.execute('block-dirty-bitmap-add', { node: 't', name: 'dst-side' });
    await qmp.execute('blockdev-mirror', { 'job-id': 'm', device: 'disk', target: 't', sync: 'full' });
    await nbd.write(Buffer.alloc(4096, 3), 0);
    await qmp.waitEvent('BLOCK_JOB_READY');
    await nbd.write(Buffer.alloc(4096, 4), MiB);
    // Our mirror's copies do not mark the target's bitmaps (QEMU's would): only writes from outside count.
    let b = { ...(await bitmapsOf(qmp, 'disk')), ...(await bitmapsOf(qmp, 't')) };
    expect([b['src-side']!.count, b['dst-side']!.count]).toEqual([128 * KiB, 0]);
    await qmp.execute('block-job-complete', { device: 'm' });
    await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    await nbd.write(Buffer.alloc(4096, 5), 2 * MiB);
    b = { ...(await bitmapsOf(qmp, 'disk')), ...(await bitmapsOf(qmp, 't')) };
    expect([b['src-side']!.count, b['dst-side']!.count]).toEqual([128 * KiB, 64 * KiB]);
    await quit(s);
  });

  it('keeps persistent bitmaps next to the image across a restart, in use while running, clean after quit', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'disk.img'), 8 * MiB);
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'backup.1', persistent: true });
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'volatile' });
    const file = join(dir, 'disk.img.backup%2E1.bmp');
    expect((await readBitmapHeader(file)).inUse).toBe(true);
    await s.nbd.write(Buffer.alloc(8192, 1), 4 * MiB);
    await quit(s);
    const saved = await loadBitmap(file, { size: 8 * MiB });
    expect(saved.consistent).toBe(true);
    expect(saved.bitmap.dirtyBytes()).toBe(64 * KiB);

    s = await start(dir);
    const b = await bitmapsOf(s.qmp, 'disk');
    expect(Object.keys(b)).toEqual(['backup.1']);
    expect(b['backup.1']).toMatchObject({ persistent: true, recording: true, count: 64 * KiB });
    expect(b['backup.1']!.inconsistent).toBeUndefined();
    expect((await readBitmapHeader(file)).inUse).toBe(true);
    await s.qmp.execute('block-dirty-bitmap-remove', { node: 'disk', name: 'backup.1' });
    expect((await readdir(dir)).filter((f) => f.endsWith('.bmp') || f.endsWith('.alog'))).toEqual([]);
    await quit(s);
  });

  it('with --bitmap-dir, a bitmap and its activity log live there; after kill -9 it loads consistent; SIGTERM saves it clean and deletes the log', async () => {
    const dir = await scratch();
    const bitmapDir = await scratch();
    await writeRandomFile(join(dir, 'disk.img'), 16 * MiB);
    let s = await start(dir, ['--bitmap-dir', bitmapDir]);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await s.nbd.write(Buffer.alloc(4096, 1), 0);
    const files = (await readdir(bitmapDir)).sort();
    expect(files).toHaveLength(2);
    expect(files[0]).toMatch(/^disk\.img-[0-9a-f]{12}\.b\.alog$/);
    expect(files[1]).toBe(files[0]!.replace(/\.alog$/, '.bmp'));
    s.d.child.kill('SIGKILL');
    await s.d.exited;
    await s.nbd.close();

    s = await start(dir, ['--bitmap-dir', bitmapDir]);
    const b = (await bitmapsOf(s.qmp, 'disk')).b!;
    // The write's 4 MiB log extent is dirty, not the whole image (persistentBitmapCrash.test.ts has the details).
    expect(b.inconsistent).toBeUndefined();
    expect(b.count).toBeGreaterThanOrEqual(64 * KiB);
    expect(b.count).toBeLessThanOrEqual(4 * MiB);
    await s.qmp.execute('block-dirty-bitmap-clear', { node: 'disk', name: 'b' });
    await s.nbd.write(Buffer.alloc(4096, 1), MiB);
    await s.nbd.close();
    s.d.child.kill('SIGTERM');
    expect(await s.d.exited).toBe(0);
    const saved = await loadBitmap(join(bitmapDir, files[1]!), { size: 16 * MiB });
    expect([saved.consistent, saved.bitmap.dirtyBytes()]).toEqual([true, 64 * KiB]);
    expect(await readdir(bitmapDir)).toEqual([files[1]]);
  });

  it('an incremental mirror (sync=bitmap) from a persistent bitmap copies only what changed', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'disk.img'), 16 * MiB);
    // Yesterday's full copy, and a bitmap that has tracked the writes since.
    await copyFile(join(dir, 'disk.img'), join(dir, 'copy.img'));
    let s = await start(dir);
    await s.qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'since-copy', persistent: true });
    for (const at of [0, 5 * MiB + 100, 15 * MiB]) await s.nbd.write(Buffer.alloc(3000, 7), at);
    await quit(s);

    s = await start(dir);
    await s.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'copy', filename: join(dir, 'copy.img') });
    await s.qmp.execute('blockdev-mirror', { 'job-id': 'inc', device: 'disk', target: 'copy', sync: 'bitmap', bitmap: 'since-copy' });
    await s.qmp.waitEvent('BLOCK_JOB_READY');
    await s.qmp.execute('block-job-complete', { device: 'inc' });
    const done = await s.qmp.waitEvent('BLOCK_JOB_COMPLETED');
    expect(done.data).toMatchObject({ len: 3 * 64 * KiB, offset: 3 * 64 * KiB });
    expect(await imagesIdentical(join(dir, 'disk.img'), join(dir, 'copy.img'))).toBe(true);
    await quit(s);
  });
});

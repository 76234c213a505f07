/**
 * Bitmap actions on persistent bitmaps, in a daemon in this process: nothing but a write's own
 * log entry may stand between a write and a crash, so a persistent bitmap starts recording
 * (add, enable) only while no write is in flight, a merge into one is saved before the command
 * returns, a write through a raw node is logged by its file node's bitmaps, and blockdev-del
 * leaves a clean file and no log.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadBitmap } from '../../src/bitmap/BitmapFile.js';
import { Daemon } from '../../src/control/Daemon.js';
import { DEFAULT_LOG_EXTENT_SIZE } from '../../src/state/ActivityLog.js';
import { readActivityLog } from '../../src/state/ActivityLogFile.js';
import { sparseFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const EXTENT = DEFAULT_LOG_EXTENT_SIZE;
const SIZE = 32 * MiB;
const scratch = useScratchDir();
const daemons: Daemon[] = [];
afterEach(async () => {
  await Promise.all(daemons.splice(0).map((d) => d.shutdown('test done')));
});

/** A daemon with a file node `disk` on a fresh image; checkpoints only when a test or an action asks. */
async function daemonWithDisk(): Promise<{ daemon: Daemon; dir: string }> {
  const dir = await scratch();
  await sparseFile(join(dir, 'disk.img'), SIZE);
  const daemon = new Daemon({ bitmapCheckpointIntervalMs: 3_600_000, notice: () => undefined });
  daemons.push(daemon);
  await daemon.execute('blockdev-add', { driver: 'file', 'node-name': 'disk', filename: join(dir, 'disk.img') });
  return { daemon, dir };
}

describe('persistent bitmap actions', () => {
  it('a persistent bitmap added while a write is in flight starts recording only once that write is done', async () => {
    const { daemon } = await daemonWithDisk();
    const prepared = await daemon.bitmaps.prepare([{ type: 'block-dirty-bitmap-add', node: 'disk', name: 'b', persistent: true }]);
    await daemon.barrier.enter(); // a write from an export, in flight
    const committing = prepared.commit();
    await new Promise((r) => setImmediate(r));
    expect(daemon.graph.get('disk').bitmaps.has('b')).toBe(false);
    daemon.barrier.exit();
    await committing;
    expect(daemon.graph.get('disk').bitmaps.get('b')!.recording).toBe(true);
  });

  it('enabling a persistent bitmap waits for the writes in flight too', async () => {
    const { daemon } = await daemonWithDisk();
    await daemon.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true, disabled: true });
    const prepared = await daemon.bitmaps.prepare([{ type: 'block-dirty-bitmap-enable', node: 'disk', name: 'b' }]);
    await daemon.barrier.enter();
    const committing = prepared.commit();
    await new Promise((r) => setImmediate(r));
    expect(daemon.graph.get('disk').bitmaps.get('b')!.recording).toBe(false);
    daemon.barrier.exit();
    await committing;
    expect(daemon.graph.get('disk').bitmaps.get('b')!.recording).toBe(true);
  });

  it('a volatile bitmap added while a write is in flight does not wait', async () => {
    const { daemon } = await daemonWithDisk();
    const prepared = await daemon.bitmaps.prepare([{ type: 'block-dirty-bitmap-add', node: 'disk', name: 'v' }]);
    await daemon.barrier.enter();
    const committing = prepared.commit();
    expect(daemon.graph.get('disk').bitmaps.has('v')).toBe(true);
    daemon.barrier.exit();
    await committing;
  });

  it('a merge into a persistent bitmap is in its bitmap file when the command returns', async () => {
    const { daemon, dir } = await daemonWithDisk();
    await daemon.execute('block-dirty-bitmap-add', { node: 'disk', name: 'src' });
    await daemon.graph.get('disk').write(Buffer.alloc(4096, 1), 5 * EXTENT);
    await daemon.execute('block-dirty-bitmap-add', { node: 'disk', name: 'dst', persistent: true });
    await daemon.execute('block-dirty-bitmap-merge', { node: 'disk', target: 'dst', bitmaps: ['src'] });
    const saved = await loadBitmap(join(dir, 'disk.img.dst.bmp'), { size: SIZE, trustInUse: true });
    expect(saved.bitmap.allDirty(5 * EXTENT, 4096)).toBe(true);
  });

  it("a write through a raw node is logged by its file node's persistent bitmap", async () => {
    const { daemon, dir } = await daemonWithDisk();
    await daemon.execute('blockdev-add', { driver: 'raw', 'node-name': 'fmt', file: 'disk' });
    await daemon.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await daemon.graph.get('fmt').write(Buffer.alloc(4096, 1), 6 * EXTENT);
    expect((await readActivityLog(join(dir, 'disk.img.b.alog'))).extents).toEqual([6]);
  });

  it('blockdev-del saves the bitmap clean and deletes its log', async () => {
    const { daemon, dir } = await daemonWithDisk();
    await daemon.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true });
    await daemon.graph.get('disk').write(Buffer.alloc(4096, 1), 3 * EXTENT);
    await daemon.execute('blockdev-del', { 'node-name': 'disk' });
    const saved = await loadBitmap(join(dir, 'disk.img.b.bmp'), { size: SIZE });
    expect([saved.consistent, saved.bitmap.allDirty(3 * EXTENT, 4096)]).toEqual([true, true]);
    expect((await readdir(dir)).filter((f) => f.endsWith('.alog'))).toEqual([]);
  });

  it('a persistent bitmap added disabled is not logged by writes', async () => {
    const { daemon, dir } = await daemonWithDisk();
    await daemon.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b', persistent: true, disabled: true });
    await daemon.graph.get('disk').write(Buffer.alloc(4096, 1), 2 * EXTENT);
    expect((await readActivityLog(join(dir, 'disk.img.b.alog'))).extents).toEqual([]);
  });
});

import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DrillView } from '../../src/replica/DrillView.js';
import { ReplicaDevice } from '../../src/replica/ReplicaDevice.js';
import { useScratchDir } from '../helpers/scratch.js';
import { contentsOf, HookedDevice, latch, newBuffer, randomDisk, settle, until } from './replicaKit.js';

const scratch = useScratchDir();
const G = 64 << 10;

/** A replica device over a random disk in `dir`, with a drill attached as of now. */
async function drilled(dir: string, size = 16 * G) {
  const disk = await randomDisk(dir, size);
  const hooked = new HookedDevice(disk.device);
  const buffer = await newBuffer(dir, hooked, G);
  const replica = new ReplicaDevice(hooked, buffer);
  const files = { snapshotPath: join(dir, 'drill-snapshot'), overlayPath: join(dir, 'drill-overlay') };
  const drill = await DrillView.create(hooked, G, files);
  await replica.exclusive(async () => replica.setObserver(drill));
  return { ...disk, hooked, buffer, replica, drill, files };
}

async function readAll(device: { size: number; read(b: Uint8Array, o: number): Promise<void> }): Promise<Buffer> {
  const b = Buffer.alloc(device.size);
  await device.read(b, 0);
  return b;
}

describe('DrillView', () => {
  it('serves the disk as it was when the drill started while replication keeps writing the disk', async () => {
    const { replica, drill, contents, path } = await drilled(await scratch());

    await replica.write(Buffer.alloc(3 * G, 0x5a), G + 17);
    await replica.writeZeroes(9 * G, G);

    expect((await readAll(drill)).equals(contents)).toBe(true);
    expect((await contentsOf(path)).equals(contents)).toBe(false);
    expect(drill.snapshotGranules).toBe(5);
  });

  it("keeps the drill's writes in its overlay: the disk and the checkpoint buffer are untouched, and close removes its files", async () => {
    const { drill, contents, path, buffer, files } = await drilled(await scratch());

    await drill.write(Buffer.alloc(5000, 0x77), 3 * G - 100);
    const expected = Buffer.from(contents);
    expected.fill(0x77, 3 * G - 100, 3 * G - 100 + 5000);
    expect((await readAll(drill)).equals(expected)).toBe(true);
    expect((await contentsOf(path)).equals(contents)).toBe(true);
    expect(buffer.savedGranules).toBe(0);

    await drill.close();
    await expect(access(files.snapshotPath)).rejects.toThrow();
    await expect(access(files.overlayPath)).rejects.toThrow();
  });

  it('shows the drill its own writes over the snapshot where replication changed the disk after the drill started', async () => {
    const { replica, drill, contents } = await drilled(await scratch());

    await replica.write(Buffer.alloc(G, 0x01), 4 * G);
    await drill.write(Buffer.alloc(100, 0x02), 4 * G + 50);

    const expected = Buffer.from(contents.subarray(4 * G, 5 * G));
    expected.fill(0x02, 50, 150);
    const got = Buffer.alloc(G);
    await drill.read(got, 4 * G);
    expect(got.equals(expected)).toBe(true);
  });

  it('holds a replication write until a view read of the disk that began before it is done, so the view never sees newer data', async () => {
    const { replica, drill, contents, hooked, buffer } = await drilled(await scratch());
    const viewRead = latch();
    const heldRead = hooked.reads.length + 1;
    hooked.hooks = { beforeRead: (_o, _l, n) => (n === heldRead ? viewRead.promise : undefined) };

    const got = Buffer.alloc(4096);
    const reading = drill.read(got, 6 * G);
    await until(() => hooked.reads.length === heldRead, 'the view read to reach the disk');
    const writing = replica.write(Buffer.alloc(4096, 0xff), 6 * G);
    // Both copies before the write are done: only the view read holds the write back now.
    await until(() => buffer.isSaved(6) && drill.snapshotGranules === 1, 'the checkpoint buffer and the snapshot to hold granule 6');
    await settle();
    expect(hooked.writes).toHaveLength(0);

    viewRead.open();
    await Promise.all([reading, writing]);
    expect(got.equals(contents.subarray(6 * G, 6 * G + 4096))).toBe(true);
    expect(hooked.writes).toHaveLength(1);
  });
});

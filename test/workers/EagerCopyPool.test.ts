import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { deviceSpecFor } from '../../src/io/location.js';
import { hashFile } from '../../src/util/imageTools.js';
import { EagerCopyPool } from '../../src/workers/EagerCopyPool.js';
import { sparseFile, writeRandomFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();

async function pair(): Promise<{ source: ReturnType<typeof deviceSpecFor>; target: ReturnType<typeof deviceSpecFor>; paths: [string, string] }> {
  const dir = await scratch();
  const [src, dst] = [join(dir, 'src.img'), join(dir, 'dst.img')];
  await writeRandomFile(src, 2 * MiB);
  await sparseFile(dst, 2 * MiB);
  return {
    source: deviceSpecFor(src, { role: 'source', writable: false }),
    target: deviceSpecFor(dst, { role: 'target', writable: true }),
    paths: [src, dst],
  };
}

const openFds = async (): Promise<number> => (await readdir('/proc/self/fd')).length;
const hasProcFds = await openFds().then(
  () => true,
  () => false,
);

describe('EagerCopyPool', () => {
  it('copies on the coordinator until its workers are up, then on the workers', async () => {
    const { source, target, paths } = await pair();
    const pool = new EagerCopyPool({ workers: 1, tasksPerWorker: 2 }, { source, target });
    try {
      const first = await pool.run({ source, target, extents: [0, MiB], detectZeroes: true, targetIsZero: true });
      expect(first.failures).toEqual([]);
      expect(pool.localTasks).toBe(1);
      await pool.up;
      await pool.run({ source, target, extents: [MiB, MiB], detectZeroes: true, targetIsZero: true });
      expect(pool.localTasks).toBe(1);
    } finally {
      await pool.close();
    }
    expect(await hashFile(paths[1])).toBe(await hashFile(paths[0]));
  });

  it.skipIf(!hasProcFds)('closes the devices it opened on the coordinator when it is closed', async () => {
    const { source, target } = await pair();
    const before = await openFds();
    const pool = new EagerCopyPool({ workers: 1, tasksPerWorker: 2 }, { source, target });
    await pool.run({ source, target, extents: [0, MiB], detectZeroes: true, targetIsZero: true });
    await pool.close();
    expect(await openFds()).toBe(before);
  });
});

import { stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SavedGranuleLog } from '../../src/replica/SavedGranuleLog.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();
const GEOMETRY = { granularity: 65536, size: 64 << 20 };

/** The log a restart finds at `path`. */
function reopen(path: string) {
  return SavedGranuleLog.open(path, GEOMETRY);
}

describe('SavedGranuleLog', () => {
  it('reopens a log as it was left, and appends go on after what it names', async () => {
    const path = join(await scratch(), 'log');
    const log = await SavedGranuleLog.create(path, { ...GEOMETRY, interval: 4 });
    await log.append([1, 2]);
    await log.append([5]);
    // Not closed: a crash leaves the file as the last append left it.
    const first = await reopen(path);
    expect(first.granules).toEqual([1, 2, 5]);
    expect(first.log.interval).toBe(4);
    await first.log.append([7]);
    await first.log.close();
    const second = await reopen(path);
    expect(second.granules).toEqual([1, 2, 5, 7]);
    await Promise.all([log.close(), second.log.close()]);
  });

  it('drops a last record cut short by a crash, and appends after the records it kept', async () => {
    const path = join(await scratch(), 'log');
    const log = await SavedGranuleLog.create(path, { ...GEOMETRY, interval: 0 });
    await log.append([1]);
    await log.append([3, 4]);
    await log.close();
    await truncate(path, (await stat(path)).size - 3);

    const torn = await reopen(path);
    expect(torn).toMatchObject({ granules: [1], tornTail: true });
    await torn.log.append([9]);
    await torn.log.close();
    const again = await reopen(path);
    expect(again).toMatchObject({ granules: [1, 9], tornTail: false });
    await again.log.close();
  });

  it('starts a new interval naming no granule on reset', async () => {
    const path = join(await scratch(), 'log');
    const log = await SavedGranuleLog.create(path, { ...GEOMETRY, interval: 0 });
    await log.append([1, 2, 3]);
    await log.reset(1);
    await log.close();
    const found = await reopen(path);
    expect(found.granules).toEqual([]);
    expect(found.log.interval).toBe(1);
    await found.log.close();
  });
});

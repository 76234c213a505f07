import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { IoError } from '../../src/errors.js';
import { ActivityLog } from '../../src/state/ActivityLog.js';
import { readActivityLog } from '../../src/state/ActivityLogFile.js';
import { useScratchDir } from '../helpers/scratch.js';

/**
 * A compaction that fails after its rename (here: the directory fsync that makes the rename
 * durable). The file at the log's path is then the new one; whatever the log does next, a write
 * it lets through must be named by that file, or a crash would lose it.
 */

const fault = vi.hoisted(() => ({ failSyncDirectory: false }));

vi.mock('../../src/util/syncDirectory.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/util/syncDirectory.js')>();
  return {
    syncDirectory: async (dir: string): Promise<void> => {
      if (fault.failSyncDirectory) {
        fault.failSyncDirectory = false;
        throw new IoError('EIO', 'flush', `flush failed on ${dir}: injected`);
      }
      return real.syncDirectory(dir);
    },
  };
});

const scratch = useScratchDir();
const E = 1 << 20;

const open: ActivityLog[] = [];
afterEach(async () => {
  fault.failSyncDirectory = false;
  await Promise.all(open.splice(0).map((log) => log.close().catch(() => {})));
});

describe('ActivityLog.compact failing after its rename', () => {
  it('rejects the compaction', async () => {
    const log = await ActivityLog.create(join(await scratch(), 'activity.log'), { extentSize: E, size: 64 * E, epoch: 1 });
    open.push(log);
    fault.failSyncDirectory = true;
    await expect(log.compact(2, log.beginPeriod(), [])).rejects.toBeInstanceOf(IoError);
  });

  it('lets no later write through unless the file at its path names the write', async () => {
    const log = await ActivityLog.create(join(await scratch(), 'activity.log'), { extentSize: E, size: 64 * E, epoch: 1 });
    open.push(log);
    await log.enter(0, 4096);
    log.exit(0, 4096);
    fault.failSyncDirectory = true;
    await log.compact(2, log.beginPeriod(), []).catch(() => {});
    const entered = log.enter(5 * E, 4096);
    const refused = entered === undefined ? false : await entered.then(() => false, () => true);
    log.exit(5 * E, 4096);
    const named = (await readActivityLog(log.path)).extents.includes(5);
    expect(refused || named).toBe(true);
  });
});

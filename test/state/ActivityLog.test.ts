import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, IoError } from '../../src/errors.js';
import { ActivityLog } from '../../src/state/ActivityLog.js';
import { readActivityLog } from '../../src/state/ActivityLogFile.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();

const E = 1 << 20;
const SIZE = 4096 * E;

const open: ActivityLog[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((log) => log.close().catch(() => {})));
});

async function newLog(options: { capacity?: number; epoch?: number } = {}): Promise<ActivityLog> {
  const log = await ActivityLog.create(join(await scratch(), 'activity.log'), { extentSize: E, size: SIZE, epoch: options.epoch ?? 1, ...options });
  open.push(log);
  return log;
}

/** A whole write: enter, wait until logged, (the write and its mark), exit. */
async function write(log: ActivityLog, offset: number, length = 4096): Promise<void> {
  try {
    await log.enter(offset, length);
  } finally {
    log.exit(offset, length);
  }
}

describe('ActivityLog.create', () => {
  it('starts a log file with the header asked for and no extent', async () => {
    const log = await newLog({ epoch: 5 });
    const file = await readActivityLog(log.path);
    expect(file.header).toEqual({ extentSize: E, size: SIZE, epoch: 5 });
    expect(file.extents).toEqual([]);
    expect(log.hotCount).toBe(0);
    expect(log.epoch).toBe(5);
  });
});

describe('ActivityLog.enter', () => {
  it('returns a promise for a write to a cold extent', async () => {
    const log = await newLog();
    const entered = log.enter(3 * E + 100, 4096);
    expect(entered).toBeInstanceOf(Promise);
    await entered;
    log.exit(3 * E + 100, 4096);
  });

  it('makes a cold extent durable in the file before the promise resolves', async () => {
    const log = await newLog();
    await log.enter(3 * E + 100, 4096);
    expect((await readActivityLog(log.path)).extents).toEqual([3]);
    log.exit(3 * E + 100, 4096);
  });

  it('returns undefined for a write to a hot extent already durable', async () => {
    const log = await newLog();
    await write(log, 7 * E);
    expect(log.enter(7 * E + 8192, 4096)).toBeUndefined();
    log.exit(7 * E + 8192, 4096);
  });

  it('returns the pending promise for a second write to an extent whose record is not yet durable', async () => {
    const log = await newLog();
    const first = log.enter(7 * E, 4096);
    const second = log.enter(7 * E + 4096, 4096);
    expect(second).toBeInstanceOf(Promise);
    await Promise.all([first, second]);
    log.exit(7 * E, 4096);
    log.exit(7 * E + 4096, 4096);
  });

  it('writes many cold extents entered in the same tick in one or two records, not one per extent', async () => {
    const log = await newLog();
    const extents = Array.from({ length: 50 }, (_, i) => i * 3);
    const entered = extents.map((e) => log.enter(e * E, 4096));
    await Promise.all(entered);
    for (const e of extents) log.exit(e * E, 4096);
    const file = await readActivityLog(log.path);
    expect(file.extents).toEqual(extents);
    // The snapshot, then the appended records.
    expect(file.records - 1).toBeGreaterThanOrEqual(1);
    expect(file.records - 1).toBeLessThanOrEqual(2);
  });

  it('makes hot both extents of a write that spans two', async () => {
    const log = await newLog();
    await write(log, 5 * E - 512, 1024);
    expect(log.hotExtents()).toEqual([4, 5]);
    expect((await readActivityLog(log.path)).extents).toEqual([4, 5]);
  });

  it('makes a write of length 0 hot in the extent of its offset', async () => {
    const log = await newLog();
    await write(log, 9 * E, 0);
    expect(log.hotExtents()).toEqual([9]);
  });

  it('counts every enter', async () => {
    const log = await newLog();
    await write(log, 0);
    await write(log, 0);
    await write(log, E);
    expect(log.enters).toBe(3);
  });
});

describe('ActivityLog.coolable', () => {
  it('offers an extent idle for a whole checkpoint period', async () => {
    const log = await newLog();
    await write(log, 2 * E);
    log.beginPeriod();
    const period = log.beginPeriod();
    expect(log.coolable(period)).toEqual([2]);
  });

  it('keeps an extent entered in the period just before the checkpoint while under capacity', async () => {
    const log = await newLog();
    await write(log, 2 * E);
    const period = log.beginPeriod();
    expect(log.coolable(period)).toEqual([]);
  });

  it('offers every idle extent entered before the checkpoint once the log is over capacity', async () => {
    const log = await newLog({ capacity: 1 });
    await write(log, 2 * E);
    await write(log, 3 * E);
    const period = log.beginPeriod();
    expect(log.coolable(period).sort((a, b) => a - b)).toEqual([2, 3]);
  });

  it('excludes an extent with a write in progress', async () => {
    const log = await newLog({ capacity: 0 });
    await write(log, 2 * E);
    await log.enter(3 * E, 4096);
    const period = log.beginPeriod();
    expect(log.coolable(period)).toEqual([2]);
    log.exit(3 * E, 4096);
  });

  it('excludes an extent entered after the checkpoint period began', async () => {
    const log = await newLog({ capacity: 0 });
    await write(log, 2 * E);
    await write(log, 3 * E);
    const period = log.beginPeriod();
    await write(log, 3 * E);
    expect(log.coolable(period)).toEqual([2]);
  });

  it('excludes an extent whose record is not durable yet', async () => {
    const log = await newLog({ capacity: 0 });
    const entered = log.enter(3 * E, 4096);
    log.exit(3 * E, 4096);
    const period = log.beginPeriod();
    expect(log.coolable(period)).toEqual([]);
    await entered;
  });
});

describe('ActivityLog.compact', () => {
  it('rewrites the file with the new epoch', async () => {
    const log = await newLog({ epoch: 1 });
    await write(log, 2 * E);
    const period = log.beginPeriod();
    await log.compact(2, period, []);
    expect((await readActivityLog(log.path)).header.epoch).toBe(2);
    expect(log.epoch).toBe(2);
  });

  it('drops the cooled extents and keeps the others, in a file of one record', async () => {
    const log = await newLog({ capacity: 0 });
    for (const e of [2, 3, 4]) await write(log, e * E);
    const period = log.beginPeriod();
    await log.compact(2, period, [2, 4]);
    const file = await readActivityLog(log.path);
    expect(file.extents).toEqual([3]);
    expect(file.records).toBe(1);
    expect(log.hotExtents()).toEqual([3]);
  });

  it('keeps an extent offered to cool but entered again before the compaction', async () => {
    const log = await newLog({ capacity: 0 });
    await write(log, 2 * E);
    const period = log.beginPeriod();
    const cool = log.coolable(period);
    expect(cool).toEqual([2]);
    await write(log, 2 * E);
    await log.compact(2, period, cool);
    expect((await readActivityLog(log.path)).extents).toEqual([2]);
  });

  it('logs a cooled extent again when it is next written', async () => {
    const log = await newLog({ capacity: 0 });
    await write(log, 2 * E);
    const period = log.beginPeriod();
    await log.compact(2, period, [2]);
    const entered = log.enter(2 * E, 4096);
    expect(entered).toBeInstanceOf(Promise);
    await entered;
    log.exit(2 * E, 4096);
    expect((await readActivityLog(log.path)).extents).toEqual([2]);
  });

  it('appends to the new file after compacting, in sequence', async () => {
    const log = await newLog();
    await write(log, 2 * E);
    await log.compact(2, log.beginPeriod(), []);
    await write(log, 6 * E);
    const file = await readActivityLog(log.path);
    expect(file.extents).toEqual([2, 6]);
    expect(file.records).toBe(2);
    expect(file.header.epoch).toBe(2);
  });

  it('keeps logged every extent entered while the compaction runs', async () => {
    const log = await newLog({ capacity: 0 });
    for (const e of [0, 1]) await write(log, e * E);
    const period = log.beginPeriod();
    let compacted = false;
    const compaction = log.compact(2, period, [0, 1]).then(() => (compacted = true));
    const entered: number[] = [];
    const waits: Promise<void>[] = [];
    // One new extent per turn of the event loop until the compaction is over: some before it
    // takes its snapshot, some during its file I/O.
    for (let e = 10; !compacted && e < 4000; e++) {
      entered.push(e);
      const w = log.enter(e * E, 4096);
      if (w) waits.push(w);
      log.exit(e * E, 4096);
      await new Promise((r) => setImmediate(r));
    }
    await compaction;
    await Promise.all(waits);
    expect(entered.length).toBeGreaterThan(1);
    const file = await readActivityLog(log.path);
    expect(file.header.epoch).toBe(2);
    expect(file.extents).toEqual(entered);
  });
});

describe('ActivityLog failures', () => {
  it('rejects the writers of a record that cannot be appended, with an IoError', async () => {
    const log = await newLog();
    await log.close();
    const err = await log.enter(4 * E, 4096)!.catch((e: unknown) => e);
    log.exit(4 * E, 4096);
    expect(err).toBeInstanceOf(IoError);
    expect((err as IoError).code).toBe(ErrorCode.IO);
  });

  it('rejects every later write once an append has failed, to a hot extent too', async () => {
    const log = await newLog();
    await write(log, 1 * E);
    await log.close();
    await log.enter(4 * E, 4096)!.catch(() => {});
    log.exit(4 * E, 4096);
    const later = log.enter(1 * E, 4096);
    log.exit(1 * E, 4096);
    expect(later).toBeInstanceOf(Promise);
    await expect(later).rejects.toBeInstanceOf(IoError);
  });
});

describe('ActivityLog.close', () => {
  it('waits for the record in progress before closing', async () => {
    const log = await newLog();
    const entered = log.enter(8 * E, 4096);
    await log.close();
    await entered;
    log.exit(8 * E, 4096);
    expect((await readActivityLog(log.path)).extents).toEqual([8]);
  });
});

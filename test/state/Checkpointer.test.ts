import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadBitmap, readBitmapHeader, saveBitmap } from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { ActivityLog } from '../../src/state/ActivityLog.js';
import { readActivityLog } from '../../src/state/ActivityLogFile.js';
import { Checkpointer } from '../../src/state/Checkpointer.js';
import { UnflushedCopies } from '../../src/state/UnflushedCopies.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();

const G = 65536;
/** Log extents of 16 granules. */
const E = 16 * G;
const SIZE = 64 * E;

interface Rig {
  readonly bitmap: DirtyBitmap;
  readonly path: string;
  readonly log: ActivityLog;
  readonly unflushed: UnflushedCopies;
  readonly checkpointer: Checkpointer;
  /** Runs inside the checkpoint's target flush (its rejection fails the flush). */
  onFlush: (() => Promise<void> | void) | undefined;
  /** A guest write as the tracked device does it: enter the log, wait, mark after the write, exit. */
  write(offset: number, length: number): Promise<void>;
  /** The saved bitmap file ∪ the log's extents, as a recovery reads them. */
  recovered(): Promise<DirtyBitmap>;
}

const logs: ActivityLog[] = [];
afterEach(async () => {
  await Promise.all(logs.splice(0).map((log) => log.close().catch(() => {})));
});

async function rig(options: { capacity?: number } = {}): Promise<Rig> {
  const dir = await scratch();
  const bitmap = DirtyBitmap.create(SIZE, G);
  const path = join(dir, 'dirty.bmp');
  await saveBitmap(path, bitmap, { inUse: true, generation: 1 });
  const log = await ActivityLog.create(join(dir, 'activity.log'), { extentSize: E, size: SIZE, epoch: 1, capacity: options.capacity });
  logs.push(log);
  const unflushed = new UnflushedCopies();
  const checkpointer = new Checkpointer({
    bitmap,
    path,
    generation: 1,
    log,
    copies: { unflushed, flushTarget: async () => await r.onFlush?.() },
    onError: (err) => {
      throw err;
    },
  });
  const r: Rig = {
    bitmap,
    path,
    log,
    unflushed,
    checkpointer,
    onFlush: undefined,
    async write(offset, length) {
      try {
        await log.enter(offset, length);
        bitmap.mark(offset, length);
      } finally {
        log.exit(offset, length);
      }
    },
    async recovered() {
      const { bitmap: saved } = await loadBitmap(path, { trustInUse: true });
      for (const e of (await readActivityLog(log.path)).extents) saved.mark(e * E, Math.min(E, SIZE - e * E));
      return saved;
    },
  };
  return r;
}

/** The copier's step before it reads: claim the range, clear its bits. Returns the claim's period. */
function copierClaims(r: Rig, offset: number, length: number): ReturnType<UnflushedCopies['claim']> {
  const period = r.unflushed.claim([offset, length]);
  r.bitmap.testAndClear(offset / G, length / G);
  return period;
}

describe('Checkpointer.checkpoint', () => {
  it('saves a bitmap that, with the log, covers every range marked before the checkpoint', async () => {
    const r = await rig();
    const ranges: Array<[number, number]> = [
      [0, G],
      [3 * E + 5 * G, 2 * G],
      [10 * E - G, 2 * G],
      [63 * E, E],
    ];
    for (const [o, l] of ranges) await r.write(o, l);
    await r.checkpointer.checkpoint();
    const recovered = await r.recovered();
    for (const [o, l] of ranges) expect(recovered.allDirty(o, l)).toBe(true);
  });

  it('keeps the ranges covered once their extents have cooled out of the log', async () => {
    const r = await rig({ capacity: 0 });
    await r.write(3 * E + 5 * G, 2 * G);
    await r.checkpointer.checkpoint();
    expect((await readActivityLog(r.log.path)).extents).toEqual([]);
    expect((await r.recovered()).allDirty(3 * E + 5 * G, 2 * G)).toBe(true);
  });

  it('cools an idle extent out of the log only at the second checkpoint by default', async () => {
    const r = await rig();
    await r.write(2 * E, G);
    await r.checkpointer.checkpoint();
    expect((await readActivityLog(r.log.path)).extents).toEqual([2]);
    await r.checkpointer.checkpoint();
    expect((await readActivityLog(r.log.path)).extents).toEqual([]);
    expect((await loadBitmap(r.path, { trustInUse: true })).bitmap.allDirty(2 * E, G)).toBe(true);
  });

  it('saves dirty a range the copier claimed and cleared but has not finished copying', async () => {
    const r = await rig({ capacity: 0 });
    await r.write(4 * E, 4 * G);
    copierClaims(r, 4 * E, 4 * G);
    expect(r.bitmap.isDirty(4 * E, 4 * G)).toBe(false);
    await r.checkpointer.checkpoint();
    const { bitmap: saved } = await loadBitmap(r.path, { trustInUse: true });
    expect(saved.allDirty(4 * E, 4 * G)).toBe(true);
  });

  it('saves dirty a range whose copy finished during the checkpoint flush', async () => {
    const r = await rig({ capacity: 0 });
    await r.write(4 * E, 4 * G);
    const period = copierClaims(r, 4 * E, 4 * G);
    r.onFlush = () => r.unflushed.finished(period);
    await r.checkpointer.checkpoint();
    const { bitmap: saved } = await loadBitmap(r.path, { trustInUse: true });
    expect(saved.allDirty(4 * E, 4 * G)).toBe(true);
  });

  it('saves clean a range whose copy finished before the checkpoint flushed the target', async () => {
    const r = await rig({ capacity: 0 });
    await r.write(4 * E, 4 * G);
    r.unflushed.finished(copierClaims(r, 4 * E, 4 * G));
    await r.checkpointer.checkpoint();
    const { bitmap: saved } = await loadBitmap(r.path, { trustInUse: true });
    expect(saved.isDirty(4 * E, 4 * G)).toBe(false);
  });

  it('raises the generation by one per checkpoint, and gives the log that epoch', async () => {
    const r = await rig();
    for (const expected of [2, 3, 4]) {
      await r.write(expected * E, G);
      await r.checkpointer.checkpoint();
      expect(r.checkpointer.generation).toBe(expected);
      expect((await readBitmapHeader(r.path)).generation).toBe(expected);
      expect((await readActivityLog(r.log.path)).header.epoch).toBe(expected);
    }
  });

  it('saves the bitmap flagged in use by default', async () => {
    const r = await rig();
    await r.checkpointer.checkpoint();
    expect((await readBitmapHeader(r.path)).inUse).toBe(true);
  });

  it('saves the bitmap without the in-use flag with clean', async () => {
    const r = await rig();
    await r.write(0, G);
    await r.checkpointer.checkpoint({ clean: true });
    const loaded = await loadBitmap(r.path);
    expect(loaded.header.inUse).toBe(false);
    expect(loaded.consistent).toBe(true);
    expect(loaded.bitmap.allDirty(0, G)).toBe(true);
  });

  it('keeps in the log an extent whose write is between enter and exit', async () => {
    const r = await rig({ capacity: 0 });
    await r.write(1 * E, G);
    await r.log.enter(5 * E, G);
    await r.checkpointer.checkpoint();
    await r.checkpointer.checkpoint();
    expect((await readActivityLog(r.log.path)).extents).toEqual([5]);
    r.log.exit(5 * E, G);
  });

  it('keeps in the log an extent first written during the checkpoint', async () => {
    const r = await rig({ capacity: 0 });
    r.onFlush = () => r.write(9 * E, G);
    await r.checkpointer.checkpoint();
    expect((await readActivityLog(r.log.path)).extents).toEqual([9]);
  });

  it('still saves when the target flush fails, every copy not known durable counted dirty', async () => {
    const r = await rig();
    await r.write(0, G);
    const period = copierClaims(r, 5 * E, G);
    r.unflushed.finished(period);
    r.onFlush = () => Promise.reject(new Error('flush failed'));
    await r.checkpointer.checkpoint();
    expect((await readBitmapHeader(r.path)).generation).toBe(2);
    const { bitmap: saved } = await loadBitmap(r.path, { trustInUse: true });
    expect(saved.allDirty(5 * E, G)).toBe(true); // copied, but the target never confirmed it
    expect(saved.allDirty(0, G)).toBe(true);
  });

  it('runs checkpoints asked for at once one after the other', async () => {
    const r = await rig();
    await r.write(0, G);
    await Promise.all([r.checkpointer.checkpoint(), r.checkpointer.checkpoint()]);
    expect((await readBitmapHeader(r.path)).generation).toBe(3);
    expect((await readActivityLog(r.log.path)).header.epoch).toBe(3);
  });
});

import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/index.js';
import { MirrorCopier } from '../../src/job/MirrorCopier.js';
import { RangeLocks } from '../../src/job/RangeLocks.js';
import type { CopyTask, CopyTaskResult } from '../../src/workers/CopyTask.js';

const KiB = 1024;
const SIZE = 1 << 20;

/** A copier whose copies stay in flight until `end` (which then stops it): the backlog never falls to zero before. */
function copierWithCopiesInFlight(): { copier: MirrorCopier; bitmap: DirtyBitmap; end: () => Promise<void> } {
  const bitmap = DirtyBitmap.create(SIZE, 4 * KiB);
  const held: Array<() => void> = [];
  const runner = {
    run: (task: CopyTask) =>
      new Promise<CopyTaskResult>((resolve) => {
        const n = task.extents.length / 2;
        held.push(() => resolve({ bytesWritten: 0, bytesZero: 0, readMicros: new Float64Array(n), writeMicros: new Float64Array(n), failures: [] }));
      }),
    close: async () => {},
  };
  const copier = new MirrorCopier({
    runner,
    source: { kind: 'file', path: '/src', writable: true, role: 'source' },
    target: { kind: 'file', path: '/dst', writable: true, role: 'target' },
    bitmap,
    locks: new RangeLocks(),
    chunkSize: 64 * KiB,
    queueDepth: 4,
    workers: 1,
    speed: 0,
    onFailures: () => {},
    flushTarget: async () => {},
    flushEvery: 0,
  });
  const end = async (): Promise<void> => {
    const stopped = copier.stop();
    for (const settle of held) settle();
    await stopped;
  };
  return { copier, bitmap, end };
}

describe('MirrorCopier', () => {
  it('asks a backlog bound given as a function again at each check, so a wait follows a bound that grows', async () => {
    const { copier, bitmap, end } = copierWithCopiesInFlight();
    bitmap.mark(0, 8 * KiB);
    copier.start();
    let bound = 0;
    let resolved = false;
    const waiting = copier.whenBacklogAtMost(() => bound).then(() => (resolved = true));
    await new Promise((r) => setTimeout(r, 120));
    expect(resolved).toBe(false); // 8 KiB in flight, over a bound of 0
    bound = 64 * KiB;
    await waiting;
    expect(copier.backlogBytes).toBe(8 * KiB);
    await end();
  });

  it('holds a wait on a fixed bound under the backlog', async () => {
    const { copier, bitmap, end } = copierWithCopiesInFlight();
    bitmap.mark(0, 8 * KiB);
    copier.start();
    let resolved = false;
    void copier.whenBacklogAtMost(4 * KiB).then(() => (resolved = true));
    await new Promise((r) => setTimeout(r, 120));
    expect(resolved).toBe(false);
    expect(copier.backlogBytes).toBe(8 * KiB);
    await end();
  });
});

import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/index.js';
import { MirrorFirstPass } from '../../src/job/MirrorFirstPass.js';
import { RangeLocks } from '../../src/job/RangeLocks.js';
import type { FailedExtent } from '../../src/job/GuardedDirtyExtents.js';
import { UnflushedCopies } from '../../src/state/UnflushedCopies.js';
import type { CopyTask, CopyTaskResult } from '../../src/workers/CopyTask.js';
import type { BlockDevice } from '../../src/io/BlockDevice.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';

const KiB = 1024;
const SIZE = 1 << 20;
const CHUNK = 64 * KiB;

/** A runner whose first task waits until the test settles it; every later one succeeds at once. */
class HeldRunner {
  readonly tasks: CopyTask[] = [];
  #settle: ((result: CopyTaskResult) => void) | undefined;
  readonly first: Promise<CopyTask>;
  #arrived!: (task: CopyTask) => void;

  constructor() {
    this.first = new Promise((resolve) => (this.#arrived = resolve));
  }

  run(task: CopyTask): Promise<CopyTaskResult> {
    this.tasks.push(task);
    if (this.tasks.length > 1) return Promise.resolve(success(task));
    this.#arrived(task);
    return new Promise((resolve) => (this.#settle = resolve));
  }

  /** Ends the first task with what `change` makes of a success. */
  settleFirst(change: (r: CopyTaskResult) => CopyTaskResult = (r) => r): void {
    this.#settle!(change(success(this.tasks[0]!)));
  }

  closed = false;

  async close(): Promise<void> {
    this.closed = true;
  }
}

function success(task: CopyTask): CopyTaskResult {
  const n = task.extents.length / 2;
  let bytes = 0;
  for (let i = 1; i < task.extents.length; i += 2) bytes += task.extents[i]!;
  return { bytesWritten: bytes, bytesZero: 0, readMicros: new Float64Array(n).fill(10), writeMicros: new Float64Array(n).fill(10), failures: [] };
}

function setup(target: BlockDevice = new MemoryDevice(SIZE), ownRunner?: HeldRunner) {
  const bitmap = DirtyBitmap.create(SIZE, 4 * KiB);
  bitmap.markAll();
  const locks = new RangeLocks();
  const unflushed = new UnflushedCopies();
  const runner = new HeldRunner();
  const failures: FailedExtent[] = [];
  const flushErrors: unknown[] = [];
  const pass = new MirrorFirstPass({
    sourceSpec: { kind: 'file', path: '/src', writable: true, role: 'source' },
    targetSpec: { kind: 'file', path: '/dst', writable: true, role: 'target' },
    source: new MemoryDevice(SIZE),
    target,
    runner,
    bitmap,
    locks,
    unflushed,
    tuning: { chunkSize: CHUNK, queueDepth: 2, workers: 1, speed: 0, flushEvery: 0 },
    modes: { readModes: ['buffered'], writeModes: ['buffered'] },
    targetIsZero: false,
    largeRequests: false,
    onFailures: (failed) => failures.push(...failed),
    onFlushError: (err) => flushErrors.push(err),
    onBatch: () => {},
    ...(ownRunner ? { ownRunner } : {}),
  });
  return { bitmap, locks, unflushed, runner, failures, flushErrors, pass };
}

/** The extents of a task as [offset, length] pairs. */
function pairs(extents: readonly number[]): Array<[number, number]> {
  return Array.from({ length: extents.length / 2 }, (_, i) => [extents[2 * i]!, extents[2 * i + 1]!]);
}

describe('MirrorFirstPass', () => {
  it('clears an extent\'s bits before its copy runs, and a checkpoint taken meanwhile still counts them dirty', async () => {
    const { bitmap, unflushed, runner, pass } = setup();
    const run = pass.run();
    const task = await runner.first;
    const snapshot = DirtyBitmap.create(SIZE, 4 * KiB);
    unflushed.addTo(snapshot);
    for (const [offset, length] of pairs(task.extents)) {
      expect(bitmap.isDirty(offset, length)).toBe(false);
      expect(snapshot.allDirty(offset, length)).toBe(true);
    }
    runner.settleFirst();
    await run;
    expect(bitmap.count()).toBe(0);
    expect(pass.summary).toMatchObject({ bytesCopied: SIZE, endedBy: undefined });
  });

  it('holds a copy lock over each extent while it is copied, so a write-blocking write there waits for the copy', async () => {
    const { locks, runner, pass } = setup();
    const run = pass.run();
    const [offset, length] = pairs((await runner.first).extents)[0]!;
    let acquired = false;
    const write = locks.acquireWrite(offset, offset + length).then((release) => {
      acquired = true;
      release();
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(acquired).toBe(false);
    runner.settleFirst();
    await write;
    await run;
    expect(acquired).toBe(true);
  });

  it('once ended, marks dirty again what a stopped stream claimed and did not copy, and claims nothing more', async () => {
    const { bitmap, runner, pass } = setup();
    const run = pass.run();
    const task = await runner.first;
    pass.end('the application wrote');
    runner.settleFirst((r) => ({ ...r, stoppedAt: 1 }));
    await run;
    const [first, ...rest] = pairs(task.extents);
    expect(rest.length).toBeGreaterThan(0);
    expect(bitmap.isDirty(first![0], first![1])).toBe(false);
    for (const [offset, length] of rest) expect(bitmap.allDirty(offset, length)).toBe(true);
    const copied = runner.tasks.slice(1).reduce((n, t) => n + pairs(t.extents).reduce((m, [, l]) => m + l, 0), 0) + first![1];
    expect(bitmap.dirtyBytes()).toBe(SIZE - copied);
    expect(pass.summary).toMatchObject({ bytesCopied: copied, endedBy: 'the application wrote' });
  });

  it('has reached the end when it is ended during its final flush, every extent copied', async () => {
    let flushStarted!: () => void;
    const flushing = new Promise<void>((resolve) => (flushStarted = resolve));
    let finishFlush!: () => void;
    const target = new MemoryDevice(SIZE);
    target.flush = () => {
      flushStarted();
      return new Promise<void>((resolve) => (finishFlush = resolve));
    };
    const { bitmap, runner, pass } = setup(target);
    const run = pass.run();
    await runner.first;
    runner.settleFirst();
    await flushing;
    pass.end('the job stopped');
    finishFlush();
    await run;
    expect(bitmap.count()).toBe(0);
    expect(pass.summary).toMatchObject({ bytesCopied: SIZE, endedBy: undefined });
  });

  it('reports a failed extent, marks it dirty again, and ends', async () => {
    const { bitmap, runner, failures, pass } = setup();
    const run = pass.run();
    const [offset, length] = pairs((await runner.first).extents)[0]!;
    runner.settleFirst((r) => ({ ...r, failures: [{ index: 0, operation: 'read', errno: 'EIO', message: 'read failed' }] }));
    await run;
    expect(failures).toEqual([{ offset, length, failure: { index: 0, operation: 'read', errno: 'EIO', message: 'read failed' } }]);
    expect(bitmap.allDirty(offset, length)).toBe(true);
    expect(pass.summary?.endedBy).toMatch(/^it failed: /);
  });

  it('marks the whole image dirty again and reports once when a flush of the target fails', async () => {
    const target = new MemoryDevice(SIZE);
    target.flush = () => Promise.reject(Object.assign(new Error('EIO: write-back failed'), { code: 'EIO' }));
    const { bitmap, runner, flushErrors, pass } = setup(target);
    const run = pass.run();
    await runner.first;
    runner.settleFirst();
    await run;
    expect(flushErrors).toHaveLength(1);
    expect(bitmap.count()).toBe(bitmap.bitCount);
    expect(pass.summary?.endedBy).toMatch(/^its flush of the target failed: /);
  });

  it('copies on threads of its own where it has them, and closes them once it has ended', async () => {
    const own = new HeldRunner();
    const { bitmap, runner, pass } = setup(undefined, own);
    const run = pass.run();
    await own.first;
    expect(own.closed).toBe(false);
    own.settleFirst();
    await run;
    await pass.close();
    expect(bitmap.count()).toBe(0);
    expect(runner.tasks).toHaveLength(0);
    expect(own.closed).toBe(true);
  });

  it('leaves the mirror\'s runner open for its copier once it has ended', async () => {
    const { runner, pass } = setup();
    const run = pass.run();
    await runner.first;
    runner.settleFirst();
    await run;
    await pass.close();
    expect(runner.closed).toBe(false);
  });

  it('copies only its warm-up until the workers are up, so that no trial measures their boot', async () => {
    const size = 256 << 20;
    const warmup = CHUNK * 2;
    const tasks: CopyTask[] = [];
    let up!: () => void;
    const runner = {
      up: new Promise<void>((resolve) => (up = resolve)),
      run: async (task: CopyTask) => (tasks.push(task), success(task)),
      close: async () => {},
    };
    const device = { size, maxRequest: 32 << 20, flush: async () => {} } as unknown as BlockDevice;
    const bitmap = DirtyBitmap.create(size, 64 * KiB);
    bitmap.markAll();
    const pass = new MirrorFirstPass({
      sourceSpec: { kind: 'file', path: '/src', writable: true, role: 'source' },
      targetSpec: { kind: 'file', path: '/dst', writable: true, role: 'target' },
      source: device,
      target: device,
      runner,
      bitmap,
      locks: new RangeLocks(),
      unflushed: undefined,
      tuning: { chunkSize: CHUNK, queueDepth: 2, workers: 1, speed: 0, flushEvery: 0 },
      modes: { readModes: ['buffered'], writeModes: ['direct', 'buffered'] },
      targetIsZero: false,
      largeRequests: false,
      onFailures: () => {},
      onFlushError: () => {},
      onBatch: () => {},
    });
    const run = pass.run();
    await new Promise((resolve) => setTimeout(resolve, 30));
    const copiedBeforeUp = tasks.flatMap((t) => pairs(t.extents));
    expect(copiedBeforeUp.reduce((n, [, l]) => n + l, 0)).toBe(warmup);
    up();
    await run;
    expect(bitmap.count()).toBe(0);
    expect(pass.summary?.io.trials.length).toBeGreaterThan(1);
  });
});

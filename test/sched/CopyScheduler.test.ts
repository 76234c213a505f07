import { describe, expect, it } from 'vitest';
import { CopyScheduler, type BatchOutcome, type TaskRunner } from '../../src/sched/CopyScheduler.js';
import { LinearExtentSource, RangesExtentSource } from '../../src/sched/ExtentSource.js';
import { RateLimiter } from '../../src/sched/RateLimiter.js';
import type { CopyTask, CopyTaskResult } from '../../src/workers/CopyTask.js';

const FILE = { kind: 'file', path: '/dev/null' } as const;

function okResult(task: CopyTask): CopyTaskResult {
  const n = task.extents.length / 2;
  let bytes = 0;
  for (let i = 1; i < task.extents.length; i += 2) bytes += task.extents[i]!;
  return { bytesWritten: bytes, bytesZero: 0, readMicros: new Float64Array(n), writeMicros: new Float64Array(n), failures: [] };
}

/** A runner that finishes tasks when told to, recording what was in flight. */
class HeldRunner implements TaskRunner {
  readonly tasks: CopyTask[] = [];
  readonly #waiting: Array<() => void> = [];
  maxInFlight = 0;
  #inFlight = 0;
  run(task: CopyTask): Promise<CopyTaskResult> {
    this.tasks.push(task);
    this.#inFlight += task.extents.length / 2;
    this.maxInFlight = Math.max(this.maxInFlight, this.#inFlight);
    return new Promise((resolve) =>
      this.#waiting.push(() => {
        this.#inFlight -= task.extents.length / 2;
        resolve(okResult(task));
      }),
    );
  }
  /** Finishes every task in flight, repeatedly, until `done` settles. */
  async finishAll(done: Promise<void>): Promise<void> {
    let settled = false;
    void done.then(() => (settled = true));
    while (!settled) {
      this.#waiting.splice(0).forEach((f) => f());
      await new Promise((r) => setImmediate(r));
    }
  }
}

function scheduler(runner: TaskRunner, overrides: Partial<ConstructorParameters<typeof CopyScheduler>[0]> = {}, seen: BatchOutcome[] = []) {
  return new CopyScheduler({
    pool: runner,
    source: FILE,
    target: FILE,
    chunkSize: 1024,
    queueDepth: 8,
    batchExtents: 2,
    detectZeroes: true,
    targetIsZero: false,
    limiter: new RateLimiter(0),
    onBatch: (o) => seen.push(o),
    ...overrides,
  });
}

describe('CopyScheduler', () => {
  it('hands out every byte of the source exactly once', async () => {
    const runner = new HeldRunner();
    const seen: BatchOutcome[] = [];
    const s = scheduler(runner, {}, seen);
    const done = s.run(new LinearExtentSource(10_000));
    await runner.finishAll(done);
    const extents = seen.flatMap((o) => [...o.extents]);
    const pairs = [];
    for (let i = 0; i < extents.length; i += 2) pairs.push([extents[i]!, extents[i + 1]!]);
    pairs.sort((a, b) => a[0]! - b[0]!);
    let next = 0;
    for (const [off, len] of pairs) {
      expect(off).toBe(next);
      expect(len).toBeLessThanOrEqual(1024);
      next = off! + len!;
    }
    expect(next).toBe(10_000);
  });

  it('copies what the last batch in flight gives back after the source ran out', async () => {
    const runner = new HeldRunner();
    const seen: BatchOutcome[] = [];
    const source = new RangesExtentSource([[0, 4096]]);
    let gaveBack = false;
    const s = scheduler(runner, {
      onBatch: (o) => {
        seen.push(o);
        // The batch that ends the source gives its second half back once.
        if (!gaveBack && o.extents.at(-2)! + o.extents.at(-1)! === 4096) {
          gaveBack = true;
          source.giveBack(2048, 4096, 'zeros');
        }
      },
    });
    const done = s.run(source);
    await runner.finishAll(done);
    const handedOut = seen.flatMap((o) => [...o.extents]).filter((_, i) => i % 2 === 0);
    expect(handedOut.filter((offset) => offset === 2048)).toHaveLength(2);
    expect(source.exhausted).toBe(true);
  });

  it('never has more extents in flight than the queue depth', async () => {
    const runner = new HeldRunner();
    const s = scheduler(runner, { queueDepth: 5, batchExtents: 2 });
    const done = s.run(new LinearExtentSource(100 * 1024));
    await runner.finishAll(done);
    expect(runner.maxInFlight).toBe(5);
  });

  it('in stream mode keeps queueDepth tasks in flight, each a sequential run of batchExtents consecutive extents', async () => {
    const runner = new HeldRunner();
    const s = scheduler(runner, { queueDepth: 3, batchExtents: 4, streams: true });
    const done = s.run(new LinearExtentSource(40 * 1024));
    await new Promise((r) => setImmediate(r));
    expect(runner.tasks).toHaveLength(3);
    expect(s.inFlightOperations).toBe(3);
    await runner.finishAll(done);
    for (const task of runner.tasks) {
      expect(task.sequential).toBe(true);
      for (let i = 2; i < task.extents.length; i += 2) expect(task.extents[i]).toBe(task.extents[i - 2]! + task.extents[i - 1]!);
    }
    const lengths = runner.tasks.map((t) => t.extents.length / 2);
    expect(lengths.reduce((a, b) => a + b, 0)).toBe(40);
    expect(lengths.slice(0, 3)).toEqual([4, 4, 4]);
    expect(Math.max(...lengths)).toBe(4);
  });

  it('shortens the last streams of a source that knows what is left, so they end together', async () => {
    const runner = new HeldRunner();
    const s = scheduler(runner, { queueDepth: 3, batchExtents: 4, streams: true });
    const done = s.run(new LinearExtentSource(40 * 1024));
    await runner.finishAll(done);
    // Each stream takes at most a queue depth's share of what is left: 4 while 12 or more remain, then less.
    expect(runner.tasks.map((t) => t.extents.length / 2)).toEqual([4, 4, 4, 4, 4, 4, 4, 4, 3, 2, 1, 1, 1]);
  });

  it('puts no more than batchExtents extents in one task', async () => {
    const runner = new HeldRunner();
    const s = scheduler(runner, { queueDepth: 64, batchExtents: 3 });
    await runner.finishAll(s.run(new LinearExtentSource(50 * 1024)));
    expect(Math.max(...runner.tasks.map((t) => t.extents.length / 2))).toBe(3);
  });

  it('under a rate limit sends no more than a slice quota per task', async () => {
    const runner = new HeldRunner();
    // 20 KiB/s: a 100 ms slice is 2 KiB, so two 1 KiB extents per task.
    const s = scheduler(runner, { queueDepth: 64, batchExtents: 16, limiter: new RateLimiter(20 * 1024) });
    const done = s.run(new LinearExtentSource(8 * 1024));
    await runner.finishAll(done);
    expect(Math.max(...runner.tasks.map((t) => t.extents.length / 2))).toBe(2);
  });

  it('reports every extent of a task whose worker died as failed', async () => {
    const seen: BatchOutcome[] = [];
    const s = scheduler({ run: () => Promise.reject(new Error('worker exited')) }, { batchExtents: 4 }, seen);
    await s.run(new LinearExtentSource(4096));
    expect(seen).toHaveLength(1);
    expect(seen[0]!.result.failures.map((f) => f.index)).toEqual([0, 1, 2, 3]);
  });

  it('dispatches nothing while paused and resumes on resume', async () => {
    const runner = new HeldRunner();
    const s = scheduler(runner);
    s.pause();
    const done = s.run(new LinearExtentSource(4096));
    await new Promise((r) => setTimeout(r, 20));
    expect(runner.tasks).toHaveLength(0);
    s.resume();
    await runner.finishAll(done);
    expect(runner.tasks.length).toBeGreaterThan(0);
  });

  it('stops handing out work after stop and waits for the tasks in flight', async () => {
    const runner = new HeldRunner();
    const seen: BatchOutcome[] = [];
    const s = scheduler(runner, { queueDepth: 2, batchExtents: 2 }, seen);
    const done = s.run(new LinearExtentSource(1 << 20));
    await new Promise((r) => setImmediate(r));
    s.stop();
    await runner.finishAll(done);
    expect(seen).toHaveLength(runner.tasks.length);
    expect(runner.tasks.length).toBeLessThan(10);
  });
});

import { describe, expect, it } from 'vitest';
import { WritebackPacer } from '../../src/sched/WritebackPacer.js';

function manualFlush(): { flush: () => Promise<void>; started: number; finish: (err?: Error) => void } {
  const state = {
    started: 0,
    pending: [] as Array<(err?: Error) => void>,
    flush(): Promise<void> {
      state.started++;
      return new Promise<void>((resolve, reject) => state.pending.push((err) => (err ? reject(err) : resolve())));
    },
    finish(err?: Error): void {
      state.pending.shift()?.(err);
    },
  };
  return state;
}

describe('WritebackPacer', () => {
  it('starts a flush once enough bytes have been written', () => {
    const f = manualFlush();
    const p = new WritebackPacer(() => f.flush(), 100);
    p.noteWritten(99);
    expect(f.started).toBe(0);
    p.noteWritten(1);
    expect(f.started).toBe(1);
  });

  it('keeps at most one flush in flight', () => {
    const f = manualFlush();
    const p = new WritebackPacer(() => f.flush(), 100);
    p.noteWritten(100);
    p.noteWritten(500);
    expect(f.started).toBe(1);
  });

  it('starts the next flush after the previous one finished', async () => {
    const f = manualFlush();
    const p = new WritebackPacer(() => f.flush(), 100);
    p.noteWritten(100);
    f.finish();
    await p.settle();
    p.noteWritten(100);
    expect(f.started).toBe(2);
  });

  it('never flushes when pacing is off', () => {
    const f = manualFlush();
    const p = new WritebackPacer(() => f.flush(), 0);
    p.noteWritten(1e12);
    expect(f.started).toBe(0);
  });

  it('reports a failed paced flush from settle', async () => {
    const f = manualFlush();
    const p = new WritebackPacer(() => f.flush(), 1);
    p.noteWritten(1);
    f.finish(new Error('EIO'));
    await expect(p.settle()).rejects.toThrow('EIO');
  });
});

import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { UnflushedCopies } from '../../src/state/UnflushedCopies.js';

const G = 65536;
const SIZE = 64 * G;

/** The byte ranges `copies` would mark in a saved snapshot. */
function marked(copies: UnflushedCopies): Array<[number, number]> {
  const bm = DirtyBitmap.create(SIZE, G);
  copies.addTo(bm);
  return [...bm.extents()];
}

const flushOk = (): Promise<void> => Promise.resolve();

/** A flush that settles when told to. */
function pendingFlush(): { flush: () => Promise<void>; succeed: () => void; fail: (err: Error) => void; started: Promise<void> } {
  let succeed!: () => void;
  let fail!: (err: Error) => void;
  let begun!: () => void;
  const started = new Promise<void>((r) => (begun = r));
  const settled = new Promise<void>((res, rej) => ((succeed = res), (fail = rej)));
  return {
    flush: () => {
      begun();
      return settled;
    },
    succeed: () => succeed(),
    fail: (err) => fail(err),
    started,
  };
}

describe('UnflushedCopies', () => {
  it('holds nothing at first', () => {
    const copies = new UnflushedCopies();
    expect(copies.rangeCount).toBe(0);
    expect(marked(copies)).toEqual([]);
  });

  it('marks a claimed range in a snapshot', () => {
    const copies = new UnflushedCopies();
    copies.claim([2 * G, 3 * G, 10 * G, G]);
    expect(copies.rangeCount).toBe(2);
    expect(marked(copies)).toEqual([
      [2 * G, 3 * G],
      [10 * G, G],
    ]);
  });

  it('keeps a claimed range while its copy is outstanding, through a successful flush', async () => {
    const copies = new UnflushedCopies();
    copies.claim([2 * G, G]);
    await copies.flushed(flushOk);
    expect(marked(copies)).toEqual([[2 * G, G]]);
  });

  it('keeps a claimed range whose copy finished, until a flush begun after it succeeds', () => {
    const copies = new UnflushedCopies();
    copies.finished(copies.claim([2 * G, G]));
    expect(marked(copies)).toEqual([[2 * G, G]]);
  });

  it('drops a claimed range at the first successful flush begun after its copy finished', async () => {
    const copies = new UnflushedCopies();
    copies.finished(copies.claim([2 * G, G]));
    await copies.flushed(flushOk);
    expect(copies.rangeCount).toBe(0);
    expect(marked(copies)).toEqual([]);
  });

  it('keeps a copy outstanding when a flush begins even if it finishes during that flush', async () => {
    const copies = new UnflushedCopies();
    const period = copies.claim([2 * G, G]);
    const f = pendingFlush();
    const flushing = copies.flushed(f.flush);
    await f.started;
    copies.finished(period);
    f.succeed();
    await flushing;
    expect(marked(copies)).toEqual([[2 * G, G]]);
  });

  it('drops such a copy at the next successful flush', async () => {
    const copies = new UnflushedCopies();
    const period = copies.claim([2 * G, G]);
    const f = pendingFlush();
    const flushing = copies.flushed(f.flush);
    await f.started;
    copies.finished(period);
    f.succeed();
    await flushing;
    await copies.flushed(flushOk);
    expect(marked(copies)).toEqual([]);
  });

  it('keeps a range claimed during a flush through that flush', async () => {
    const copies = new UnflushedCopies();
    const f = pendingFlush();
    const flushing = copies.flushed(f.flush);
    await f.started;
    copies.finished(copies.claim([5 * G, G]));
    f.succeed();
    await flushing;
    expect(marked(copies)).toEqual([[5 * G, G]]);
  });

  it('drops nothing when the flush fails, and rethrows its error', async () => {
    const copies = new UnflushedCopies();
    copies.finished(copies.claim([2 * G, G]));
    copies.written(7 * G, G);
    const boom = new Error('flush failed');
    await expect(copies.flushed(() => Promise.reject(boom))).rejects.toBe(boom);
    expect(marked(copies)).toEqual([
      [2 * G, G],
      [7 * G, G],
    ]);
  });

  it('drops after a failed flush what the next successful one covers', async () => {
    const copies = new UnflushedCopies();
    copies.finished(copies.claim([2 * G, G]));
    await copies.flushed(() => Promise.reject(new Error('flush failed'))).catch(() => {});
    await copies.flushed(flushOk);
    expect(marked(copies)).toEqual([]);
  });

  it('marks a written range (a write-blocking write) in a snapshot', () => {
    const copies = new UnflushedCopies();
    copies.written(3 * G, 2 * G);
    expect(marked(copies)).toEqual([[3 * G, 2 * G]]);
  });

  it('drops a written range at the next successful flush', async () => {
    const copies = new UnflushedCopies();
    copies.written(3 * G, 2 * G);
    await copies.flushed(flushOk);
    expect(marked(copies)).toEqual([]);
  });

  it('keeps a range written during a flush through that flush', async () => {
    const copies = new UnflushedCopies();
    const f = pendingFlush();
    const flushing = copies.flushed(f.flush);
    await f.started;
    copies.written(3 * G, G);
    f.succeed();
    await flushing;
    expect(marked(copies)).toEqual([[3 * G, G]]);
  });

  it('drops the finished copies of a flush while keeping one still outstanding', async () => {
    const copies = new UnflushedCopies();
    copies.claim([1 * G, G]); // outstanding
    await copies.flushed(flushOk); // a new period begins
    copies.finished(copies.claim([9 * G, G]));
    await copies.flushed(flushOk);
    expect(marked(copies)).toEqual([[1 * G, G]]);
  });
});

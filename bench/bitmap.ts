/**
 * Dirty bitmap micro benchmarks (issue 3): a 1 TiB image at 64 KiB granularity (16 Mi bits),
 * 0.01 % and 10 % of it dirty. Each task restores its bitmap outside the timed call, so every
 * call sees the same density. Two-thread marking runs the built code in worker threads.
 */
import { Worker } from 'node:worker_threads';
import { Bench } from 'tinybench';
import { DirtyBitmap } from '../src/bitmap/DirtyBitmap.js';
import { DirtyExtentCursor } from '../src/bitmap/DirtyExtentCursor.js';
import { machineLine, printTable, taskOf, type MicroSuite, type ResultRow } from './suite.js';

const TiB = 2 ** 40;
const GRANULARITY = 64 * 1024;
const WRITE = 4096;
const MiB = 2 ** 20;
const DENSITIES: ReadonlyArray<[label: string, fraction: number]> = [
  ['0.01 % dirty', 0.0001],
  ['10 % dirty', 0.1],
];
/** Operations per timed call, so that one call is long enough to time well. */
const BATCH = 4096;
/** Marks per thread per timed call in the two-thread task. */
const THREAD_BATCH = 1 << 20;

/** A bitmap with `fraction` of its bits set at random. */
function background(fraction: number): DirtyBitmap {
  const bitmap = DirtyBitmap.create(TiB, GRANULARITY);
  const want = Math.round(bitmap.bitCount * fraction);
  while (bitmap.count() < want) bitmap.markBits(Math.floor(Math.random() * bitmap.bitCount), 1);
  return bitmap;
}

/** A working copy of `from`, and a function that puts it back to `from`'s bits. */
function restorable(from: DirtyBitmap): { bitmap: DirtyBitmap; restore: () => void } {
  const bitmap = DirtyBitmap.create(from.size, from.granularity);
  bitmap.merge(from);
  return {
    bitmap,
    restore: () => {
      bitmap.clear();
      bitmap.merge(from);
    },
  };
}

/** Random 4 KiB-aligned write offsets over the whole image, in rotating batches. */
function writeOffsets(batches: number): Float64Array[] {
  return Array.from({ length: batches }, () => Float64Array.from({ length: BATCH }, () => Math.floor(Math.random() * (TiB / WRITE)) * WRITE));
}

function randomBits(bitCount: number): Int32Array {
  return Int32Array.from({ length: BATCH }, () => Math.floor(Math.random() * bitCount));
}

async function singleThreadTasks(rows: ResultRow[]): Promise<void> {
  for (const [label, fraction] of DENSITIES) {
    const base = background(fraction);
    const bench = new Bench({ name: `bitmap ${label}`, time: 1000, warmupTime: 300, iterations: 10 });

    // New bits: each call marks writes that land on clean bits, then clears exactly those bits
    // again (untimed). The summary bits stay set, as they do between two scans of a live bitmap.
    const offsets = writeOffsets(16);
    const marking = restorable(base).bitmap;
    let batch = offsets[0]!;
    let added: number[] = [];
    let round = 0;
    bench.add(
      'mark',
      () => {
        for (let i = 0; i < BATCH; i++) marking.mark(batch[i]!, WRITE);
      },
      {
        beforeEach: () => {
          batch = offsets[round++ & 15]!;
          // Asked of `base` (the same bits): a search of `marking` would drop its stale summary bits.
          added = Array.from(batch, (offset) => Math.floor(offset / GRANULARITY)).filter((bit) => !base.isDirty(bit * GRANULARITY, 1));
        },
        afterEach: () => {
          for (const bit of added) marking.testAndClear(bit, 1);
        },
      },
    );

    // New bits where a scan has dropped the stale summary bits: clear() and merge() restore the
    // bitmap, and clear()'s scan drops the summary bits of earlier batches' words, so a new bit
    // raises its summary bits level by level, as after a copier's pass. The restore is O(dirty):
    // sparse case only.
    if (fraction < 0.01) {
      const rescanned = restorable(base);
      bench.add(
        'mark after scan',
        () => {
          const writes = offsets[round++ & 15]!;
          for (let i = 0; i < BATCH; i++) rescanned.bitmap.mark(writes[i]!, WRITE);
        },
        { afterEach: rescanned.restore },
      );
    }

    // A long stream of writes on this thread, as an interceptor marks them: the bitmap's lines stay
    // cached from one write to the next, and later writes often find their word already non-zero.
    if (fraction < 0.01) {
      const streamed = restorable(base);
      const stream = Float64Array.from({ length: THREAD_BATCH }, () => Math.floor(Math.random() * (TiB / WRITE)) * WRITE);
      bench.add(
        'mark stream',
        () => {
          for (let i = 0; i < stream.length; i++) streamed.bitmap.mark(stream[i]!, WRITE);
        },
        { afterEach: streamed.restore },
      );
    }

    // The same writes again and again: after the first call every bit is already set.
    const remarking = restorable(base).bitmap;
    bench.add('mark again', () => {
      const writes = offsets[round++ & 15]!;
      for (let i = 0; i < BATCH; i++) remarking.mark(writes[i]!, WRITE);
    });

    const clearing = restorable(base);
    const starts = randomBits(base.bitCount - 16);
    bench.add(
      'testAndClear',
      () => {
        for (let i = 0; i < BATCH; i++) clearing.bitmap.testAndClear(starts[i]!, 16);
      },
      { afterEach: () => clearing.bitmap.merge(base) },
    );

    const searching = restorable(base).bitmap;
    const froms = randomBits(base.bitCount);
    bench.add('nextDirty', () => {
      let found = 0;
      for (let i = 0; i < BATCH; i++) found += searching.nextDirty(froms[i]!);
      return void found;
    });

    const scanning = restorable(base).bitmap;
    bench.add('extents', () => {
      let n = 0;
      for (const _ of scanning.extents({ maxBytes: MiB })) n++;
      return void n;
    });

    const draining = restorable(base);
    const cursor = new DirtyExtentCursor(draining.bitmap);
    const out: number[] = [];
    bench.add(
      'cursor',
      () => {
        do out.length = 0;
        while (cursor.take(out, 64, MiB) > 0);
      },
      { beforeEach: () => draining.bitmap.merge(base) },
    );

    await bench.run();
    rows.push(
      { operation: 'mark (random 4 KiB write, new bit)', case: label, batch: BATCH, task: taskOf(bench, 'mark') },
      ...(fraction < 0.01
        ? [
            { operation: 'mark (random 4 KiB write, new bit, summaries just cleaned)', case: label, batch: BATCH, task: taskOf(bench, 'mark after scan') },
            { operation: 'mark, main thread (1 Mi random 4 KiB writes a call)', case: label, batch: THREAD_BATCH, task: taskOf(bench, 'mark stream') },
          ]
        : []),
      { operation: 'mark (random 4 KiB write, bit already set)', case: label, batch: BATCH, task: taskOf(bench, 'mark again') },
      { operation: 'testAndClear (16 bits = 1 MiB, random)', case: label, batch: BATCH, task: taskOf(bench, 'testAndClear') },
      { operation: 'nextDirty (from a random bit)', case: label, batch: BATCH, task: taskOf(bench, 'nextDirty') },
      { operation: 'full extent scan (extents(), 1 MiB max)', case: label, batch: 1, task: taskOf(bench, 'extents') },
      { operation: 'full drain (DirtyExtentCursor.take 64 x 1 MiB)', case: label, batch: 1, task: taskOf(bench, 'cursor') },
    );
  }
}

/** Worker threads that mark `THREAD_BATCH` random 4 KiB writes each time they are told to. */
async function startMarkers(bitmap: DirtyBitmap, threads: number, marksEach: number): Promise<{ markOnce: () => Promise<void>; stop: () => Promise<void> }> {
  const workers = Array.from(
    { length: threads },
    () => new Worker(new URL('./bitmapMarkWorker.mjs', import.meta.url), { workerData: { shared: bitmap.share(), count: marksEach, write: WRITE } }),
  );
  await Promise.all(workers.map((w) => new Promise((resolve) => w.once('message', resolve))));
  const markOnce = (): Promise<void> =>
    Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            w.once('message', () => resolve());
            w.postMessage('mark');
          }),
      ),
    ).then(() => undefined);
  return { markOnce, stop: async () => void (await Promise.all(workers.map((w) => w.terminate()))) };
}

async function threadTasks(rows: ResultRow[]): Promise<void> {
  const [label, fraction] = DENSITIES[0]!;
  const base = background(fraction);
  const bench = new Bench({ name: 'bitmap threads', time: 2000, warmupTime: 500, iterations: 16 });
  const two = restorable(base);
  const one = restorable(base);
  const twoThreads = await startMarkers(two.bitmap, 2, THREAD_BATCH);
  const oneThread = await startMarkers(one.bitmap, 1, 2 * THREAD_BATCH);
  bench.add('one worker', oneThread.markOnce, { afterEach: one.restore });
  bench.add('two workers', twoThreads.markOnce, { afterEach: two.restore });
  try {
    await bench.run();
  } finally {
    await Promise.all([twoThreads.stop(), oneThread.stop()]);
  }
  rows.push(
    { operation: 'mark, 1 worker thread (2 Mi writes a call)', case: label, batch: 2 * THREAD_BATCH, task: taskOf(bench, 'one worker') },
    { operation: 'mark, 2 worker threads at once (1 Mi writes each)', case: label, batch: 2 * THREAD_BATCH, task: taskOf(bench, 'two workers') },
  );
}

export const bitmapSuite: MicroSuite = {
  name: 'bitmap',
  async run() {
    const rows: ResultRow[] = [];
    await singleThreadTasks(rows);
    await threadTasks(rows);
    const memory = DirtyBitmap.create(TiB, GRANULARITY).memoryBytes;
    printTable(`Dirty bitmap: 1 TiB image, 64 KiB granularity (16 Mi bits, ${(memory / MiB).toFixed(3)} MiB shared memory); ${machineLine()}`, rows);
  },
};

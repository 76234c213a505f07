/**
 * Worker threads mark random ranges while this thread drains: nothing marked may be lost, nothing
 * unmarked may appear, and count() must be exact at the end. The workers run the build
 * (test/fixtures/bitmapMarker.mjs imports dist/), which `npm test` makes first.
 */
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { DirtyBitmap, PRIVATE_COUNT_SLOTS } from '../../src/bitmap/DirtyBitmap.js';
import { DirtyExtentCursor } from '../../src/bitmap/DirtyExtentCursor.js';

const WORKERS = 3;
const OPS_PER_WORKER = 400_000;
const G = 4096;
/** Two level-1 summary words' worth and more, so marks and drains cross summary words. */
const BIT_COUNT = 70_000;

/** Starts the markers; resolves to the union of the bits they marked once all have finished. */
function startMarkers(bitmap: DirtyBitmap, workers = WORKERS, ops = OPS_PER_WORKER): { done: () => boolean; marked: Promise<Uint8Array> } {
  let finished = 0;
  const results = Array.from({ length: workers }, () => {
    const worker = new Worker(new URL('../fixtures/bitmapMarker.mjs', import.meta.url), {
      workerData: { shared: bitmap.share(), ops, maxRun: 40 },
    });
    return new Promise<Uint8Array>((resolve, reject) => {
      worker.once('message', (bits: Uint8Array) => {
        finished++;
        resolve(bits);
      });
      worker.once('error', reject);
    });
  });
  const marked = Promise.all(results).then((all) => {
    const union = new Uint8Array(BIT_COUNT);
    for (const bits of all) for (let b = 0; b < BIT_COUNT; b++) union[b]! |= bits[b]!;
    return union;
  });
  return { done: () => finished === workers, marked };
}

/** Lets worker messages in. */
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function recordBitset(into: Uint8Array, bitset: Uint32Array, first: number): void {
  for (let w = 0; w < bitset.length; w++) {
    let x = bitset[w]!;
    while (x !== 0) {
      const low = 31 - Math.clz32(x & -x);
      into[first + w * 32 + low] = 1;
      x &= x - 1;
    }
  }
}

/** Checks drained ∪ still set == marked, drained ⊆ marked, and count() == still set. */
function expectNothingLost(bitmap: DirtyBitmap, drained: Uint8Array, marked: Uint8Array): void {
  const stillSet = new Uint8Array(BIT_COUNT);
  let set = 0;
  for (let b = bitmap.nextDirty(0); b >= 0; b = bitmap.nextDirty(b + 1)) {
    stillSet[b] = 1;
    set++;
  }
  let lost = 0;
  let phantom = 0;
  for (let b = 0; b < BIT_COUNT; b++) {
    if (marked[b] && !drained[b] && !stillSet[b]) lost++;
    if (!marked[b] && (drained[b] || stillSet[b])) phantom++;
  }
  expect({ lost, phantom }).toEqual({ lost: 0, phantom: 0 });
  // The drain really ran while the workers marked.
  expect(drained.includes(1)).toBe(true);
  expect(bitmap.count()).toBe(set);
}

/** Drains with testAndClear in unaligned windows (clears start and end inside words) until the markers finish. */
async function drainWhileMarking(bitmap: DirtyBitmap, markers: ReturnType<typeof startMarkers>): Promise<Uint8Array> {
  const drained = new Uint8Array(BIT_COUNT);
  for (let sweeps = 0; !markers.done(); sweeps++) {
    for (let first = sweeps % 37; first < BIT_COUNT; first += 997) {
      recordBitset(drained, bitmap.testAndClear(first, Math.min(997, BIT_COUNT - first)), first);
    }
    await tick();
  }
  return drained;
}

describe('DirtyBitmap under concurrent marking', () => {
  it('loses no bit drained with testAndClear while worker threads mark', async () => {
    const bitmap = DirtyBitmap.create(BIT_COUNT * G, G);
    const markers = startMarkers(bitmap);
    const drained = await drainWhileMarking(bitmap, markers);
    expectNothingLost(bitmap, drained, await markers.marked);
  });

  it('keeps count() exact with more marking threads than private count slots', async () => {
    const bitmap = DirtyBitmap.create(BIT_COUNT * G, G);
    // The threads past the private slots share one, counted with Atomics.add.
    const markers = startMarkers(bitmap, PRIVATE_COUNT_SLOTS + 2, 200_000);
    const drained = await drainWhileMarking(bitmap, markers);
    expectNothingLost(bitmap, drained, await markers.marked);
  });

  it('loses no bit drained through a DirtyExtentCursor while worker threads mark', async () => {
    const bitmap = DirtyBitmap.create(BIT_COUNT * G, G);
    const cursor = new DirtyExtentCursor(bitmap);
    const markers = startMarkers(bitmap);
    const drained = new Uint8Array(BIT_COUNT);
    const out: number[] = [];
    while (!markers.done()) {
      out.length = 0;
      cursor.take(out, 64, 8 * G);
      for (let i = 0; i < out.length; i += 2) drained.fill(1, out[i]! / G, (out[i]! + out[i + 1]!) / G);
      await tick();
    }
    expectNothingLost(bitmap, drained, await markers.marked);
  });

  it('loses no bit across repeated freeze and commit while worker threads mark', async () => {
    const bitmap = DirtyBitmap.create(BIT_COUNT * G, G);
    const markers = startMarkers(bitmap);
    const drained = new Uint8Array(BIT_COUNT);
    let round = 0;
    while (!markers.done()) {
      const succession = bitmap.freeze();
      const { frozen } = succession;
      // Half the rounds fail and give their bits back, to be taken by a later round.
      if (round++ % 2 === 0) {
        for (let b = frozen.nextDirty(0); b >= 0; b = frozen.nextDirty(b + 1)) drained[b] = 1;
        succession.commit();
      } else {
        succession.abort();
      }
      await tick();
    }
    expectNothingLost(bitmap, drained, await markers.marked);
  });
});

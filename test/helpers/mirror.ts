import { Worker } from 'node:worker_threads';
import { readFile } from 'node:fs/promises';
import type { SharedTracker } from '../../src/job/TrackedWriter.js';

/** A plan for one random writer (see test/fixtures/randomWrites.mjs). */
export interface WritePlan {
  readonly seed: number;
  readonly count: number;
  readonly from: number;
  readonly to: number;
  readonly maxLength: number;
}

export interface RecordedWrite {
  readonly offset: number;
  readonly data: Uint8Array;
}

const FIXTURE = new URL('../fixtures/randomWrites.mjs', import.meta.url);

/** Runs a random writer on a worker thread through a job's tracker; resolves with its writes. */
export function randomWriterThread(tracker: SharedTracker, plan: WritePlan): Promise<RecordedWrite[]> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(FIXTURE, { workerData: { kind: 'random-writes', tracker, plan } });
    worker.on('message', (m: { writes?: RecordedWrite[] }) => m.writes && resolve(m.writes));
    worker.on('error', reject);
    worker.on('exit', (code) => code !== 0 && reject(new Error(`writer thread exited with ${code}`)));
  });
}

/** Runs a random writer on this thread. */
export async function randomWriterHere(
  device: { write(data: Uint8Array, offset: number): Promise<void> },
  plan: WritePlan,
): Promise<RecordedWrite[]> {
  const { runRandomWrites } = (await import(FIXTURE.href)) as {
    runRandomWrites: (d: typeof device, p: WritePlan) => Promise<RecordedWrite[]>;
  };
  return runRandomWrites(device, plan);
}

/** The image as it must read after `writes` (each list in order; lists touch disjoint regions). */
export function applyWrites(initial: Buffer, ...lists: RecordedWrite[][]): Buffer {
  const image = Buffer.from(initial);
  for (const list of lists) for (const w of list) image.set(w.data, w.offset);
  return image;
}

/** First differing offset between a file and an expected buffer, or -1. */
export async function firstDifference(path: string, expected: Buffer): Promise<number> {
  const actual = await readFile(path);
  if (actual.length !== expected.length) return Math.min(actual.length, expected.length);
  for (let i = 0; i < actual.length; i++) if (actual[i] !== expected[i]) return i;
  return -1;
}

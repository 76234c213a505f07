/**
 * Runs JsonStream (from the TypeScript sources, through tsx) in a worker thread, so that a scan
 * that never ends fails the test instead of freezing it: vitest's timeouts are timers, and a
 * synchronous loop in the test's own thread never lets a timer fire. The worker is terminated
 * when a feed takes longer than its deadline.
 */
import { Worker } from 'node:worker_threads';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { JsonItem, JsonStreamOptions } from '../../src/control/qmp/JsonStream.js';

const MODULE = pathToFileURL(resolve(import.meta.dirname, '../../src/control/qmp/JsonStream.ts')).href;
/** tsx's loader API, found from here (an eval'd worker resolves bare names from the working directory). */
const TSX = import.meta.resolve('tsx/esm/api');

/** What feeding one input gave. */
export interface FeedResult {
  /** Items from feeding the chunks one by one, in order. */
  readonly items: JsonItem[];
  /** Items from feeding the chunks' concatenation in one push. */
  readonly whole: JsonItem[];
  /** Most characters the stream held after any push. */
  readonly maxBuffered: number;
  /** Longest push, in milliseconds. */
  readonly maxPushMs: number;
  /** How many items the chunks gave. */
  readonly count: number;
  /** Whether `items` and `whole` are the same (computed in the worker, for feeds whose items are not sent back). */
  readonly same: boolean;
}

/** Options of {@link JsonStreamWorker.feed}. */
export interface FeedOptions {
  /** Send the items back (default true; false leaves `items` and `whole` empty, for huge feeds). */
  readonly items?: boolean;
  /** Stop the worker and fail when the feed takes longer (default 5000 ms). */
  readonly deadlineMs?: number;
}

const WORKER_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const { performance } = require('node:perf_hooks');
import(workerData.tsx)
  .then((tsx) => { tsx.register(); return import(workerData.module); })
  .then(({ JsonStream }) => {
    parentPort.on('message', ({ id, chunks, options, sendItems }) => {
      const s = new JsonStream(options);
      const items = [];
      let maxBuffered = 0;
      let maxPushMs = 0;
      for (const c of chunks) {
        const t = performance.now();
        for (const item of s.push(c)) items.push(item);
        maxPushMs = Math.max(maxPushMs, performance.now() - t);
        maxBuffered = Math.max(maxBuffered, s.buffered);
      }
      const whole = new JsonStream(options).push(chunks.join(''));
      const same = JSON.stringify(items) === JSON.stringify(whole);
      const result = { items: sendItems ? items : [], whole: sendItems ? whole : [], maxBuffered, maxPushMs, count: items.length, same };
      parentPort.postMessage({ id, result });
    });
    parentPort.postMessage({ ready: true });
  })
  .catch((err) => parentPort.postMessage({ failed: String(err && err.stack || err) }));
`;

/** One worker thread and the feeds waiting for its answers. */
interface Running {
  readonly worker: Worker;
  readonly ready: Promise<void>;
  readonly waiting: Map<number, (r: FeedResult) => void>;
}

/**
 * A worker that feeds inputs to fresh JsonStreams, one at a time. A feed past its deadline
 * terminates the worker (it may be looping); the next feed starts another. `close()` it after the tests.
 */
export class JsonStreamWorker {
  #running: Running | undefined;
  #next = 1;

  /**
   * Feeds `chunks` to a new stream; rejects (and stops the worker) when that takes longer than
   * `deadlineMs`.
   */
  async feed(chunks: readonly string[], options: JsonStreamOptions = {}, feed: FeedOptions = {}): Promise<FeedResult> {
    const deadlineMs = feed.deadlineMs ?? 5000;
    const running = (this.#running ??= start());
    await running.ready;
    const id = this.#next++;
    return new Promise((done, fail) => {
      const timer = setTimeout(() => {
        running.waiting.delete(id);
        if (this.#running === running) this.#running = undefined;
        void running.worker.terminate();
        fail(new Error(`JsonStream did not return within ${deadlineMs} ms for ${JSON.stringify(chunks).slice(0, 200)}`));
      }, deadlineMs);
      running.waiting.set(id, (r) => {
        clearTimeout(timer);
        running.waiting.delete(id);
        done(r);
      });
      running.worker.postMessage({ id, chunks, options, sendItems: feed.items !== false });
    });
  }

  async close(): Promise<void> {
    const running = this.#running;
    this.#running = undefined;
    await running?.worker.terminate();
  }
}

function start(): Running {
  const worker = new Worker(WORKER_CODE, { eval: true, workerData: { module: MODULE, tsx: TSX } });
  const waiting = new Map<number, (r: FeedResult) => void>();
  const ready = new Promise<void>((resolve, fail) => {
    worker.on('message', (m: { ready?: true; failed?: string; id?: number; result?: FeedResult }) => {
      if (m.ready) resolve();
      else if (m.failed) fail(new Error(m.failed));
      else waiting.get(m.id!)?.(m.result!);
    });
    worker.on('error', fail);
  });
  return { worker, ready, waiting };
}

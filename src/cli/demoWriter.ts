/**
 * The demo's built-in application: a worker thread that writes random blocks through a mirror
 * job's tracker at a set rate until told to stop, then reports what it wrote.
 */
import { randomFillSync } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { TrackedWriter, type SharedTracker } from '../job/TrackedWriter.js';

/** What the demo tells its writer thread. */
export interface DemoWriterData {
  readonly tracker: SharedTracker;
  /** Bytes per second to write. */
  readonly rate: number;
  readonly maxBlock: number;
}

/** What the writer reports when stopped. */
export interface DemoWriterReport {
  readonly writes: number;
  readonly bytes: number;
}

const BLOCK_ALIGN = 4096;

async function run(data: DemoWriterData): Promise<void> {
  const writer = TrackedWriter.open(data.tracker);
  const buf = Buffer.allocUnsafe(data.maxBlock);
  let stop = false;
  parentPort!.on('message', (m: string) => m === 'stop' && (stop = true));
  const started = performance.now();
  let writes = 0;
  let bytes = 0;
  while (!stop) {
    const length = BLOCK_ALIGN * (1 + Math.floor((Math.random() * data.maxBlock) / BLOCK_ALIGN));
    const blocks = Math.floor((writer.size - length) / BLOCK_ALIGN);
    const offset = BLOCK_ALIGN * Math.floor(Math.random() * (blocks + 1));
    randomFillSync(buf, 0, length);
    await writer.write(buf.subarray(0, length), offset);
    writes++;
    bytes += length;
    // Keep to the rate: sleep until the bytes written so far are due.
    const ahead = (bytes / data.rate) * 1000 - (performance.now() - started);
    if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
  }
  await writer.flush();
  await writer.close();
  parentPort!.postMessage({ writes, bytes } satisfies DemoWriterReport);
}

await run(workerData as DemoWriterData);

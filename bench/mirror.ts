/**
 * Live-mirror benchmark: mirrors an image while a writer does random 4 KiB writes at queue depth 8
 * through the job (unthrottled, and at fixed rates), and reports time to ready, bytes copied per
 * image byte, the writer's IOPS and latency with and without the mirror, and the tuner's chunk
 * sizes over time.
 *
 *   npm run bench:mirror -- [--size 4G] [--policies report,write-blocking,throttle]
 *                           [--rates max,2000,20000] [--baseline-seconds 5] [--max-seconds 60]
 *                           [--dir DIR] [--json FILE]
 */
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { FileDevice } from '../src/io/FileDevice.js';
import { startMirror, type NoConvergencePolicy, type TuningDecision } from '../src/index.js';
import { LatencyWindow, type LatencyStats } from '../src/sched/LatencyWindow.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { machineInfo } from './lib/machine.js';
import { markdownTable } from './lib/stats.js';

const BLOCK = 4096;
const DEPTH = 8;
/** Random blocks are drawn from a pool, so the writer spends no time making random data. */
const POOL_BLOCKS = 1024;

interface Writable {
  write(data: Uint8Array, offset: number): Promise<void>;
}

/** A writer of random 4 KiB blocks at queue depth 8, at most `iops` a second (0: as fast as it goes). */
class RandomWriter {
  readonly latency = new LatencyWindow();
  writes = 0;
  #running = true;
  #loops: Promise<void>[] = [];
  readonly #started = performance.now();

  constructor(device: Writable, size: number, iops: number) {
    const pool = Buffer.allocUnsafe(POOL_BLOCKS * BLOCK);
    randomFillSync(pool);
    const blocks = Math.floor(size / BLOCK);
    for (let q = 0; q < DEPTH; q++) {
      this.#loops.push(
        (async () => {
          let i = q;
          while (this.#running) {
            if (iops > 0) {
              // Keep to the rate overall: write n is due at n / iops seconds.
              const due = ((this.writes + 1) / iops) * 1000 - (performance.now() - this.#started);
              if (due > 0) await new Promise((r) => setTimeout(r, due));
            }
            const data = pool.subarray((i % POOL_BLOCKS) * BLOCK, (i % POOL_BLOCKS) * BLOCK + BLOCK);
            const offset = Math.floor(Math.random() * blocks) * BLOCK;
            const t0 = performance.now();
            await device.write(data, offset);
            this.latency.record((performance.now() - t0) * 1000);
            this.writes++;
            i += DEPTH;
          }
        })(),
      );
    }
  }

  get seconds(): number {
    return (performance.now() - this.#started) / 1000;
  }

  async stop(): Promise<{ iops: number; latency: LatencyStats }> {
    const seconds = this.seconds;
    this.#running = false;
    await Promise.all(this.#loops);
    return { iops: this.writes / seconds, latency: this.latency.total() };
  }
}

interface MirrorBenchResult {
  readonly policy: NoConvergencePolicy;
  readonly rate: string;
  readonly readySeconds: number | null;
  readonly copiedPerImageByte: number;
  readonly iops: number;
  readonly latency: LatencyStats;
  readonly baselineIops: number;
  readonly baselineLatency: LatencyStats;
  /** The tuner's chunk size each half second. */
  readonly chunkSizes: number[];
  readonly copyMode: string;
}

async function baseline(path: string, size: number, iops: number, seconds: number): Promise<{ iops: number; latency: LatencyStats }> {
  const dev = await FileDevice.open({ kind: 'file', path, writable: true });
  const writer = new RandomWriter(dev, size, iops);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const r = await writer.stop();
  await dev.close();
  return r;
}

async function mirrorRun(src: string, dst: string, size: number, policy: NoConvergencePolicy, iops: number, maxSeconds: number) {
  await rm(dst, { force: true });
  const started = performance.now();
  const job = await startMirror({ source: src, target: dst, onNoConvergence: policy });
  const decisions: TuningDecision[] = [];
  job.on('tuning', (d) => decisions.push(d));
  const chunkSizes: number[] = [];
  const sampler = setInterval(() => chunkSizes.push(decisions.at(-1)?.chunkSize ?? 0), 500);
  const writer = new RandomWriter(job.device, size, iops);
  const ready = await new Promise<number | null>((resolve) => {
    const timeout = setTimeout(() => resolve(null), maxSeconds * 1000);
    job.once('ready', () => {
      clearTimeout(timeout);
      resolve((performance.now() - started) / 1000);
    });
  });
  const copied = job.progress().bytesCopied;
  const w = await writer.stop();
  clearInterval(sampler);
  const copyMode = job.copyMode;
  if (ready !== null) await job.complete();
  else await job.cancel({ force: true });
  await job.close();
  return { readySeconds: ready, copiedPerImageByte: copied / size, iops: w.iops, latency: w.latency, chunkSizes, copyMode };
}

function ms(micros: number): string {
  return (micros / 1000).toFixed(2);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '4G' },
      policies: { type: 'string', default: 'report,write-blocking,throttle' },
      rates: { type: 'string', default: 'max,2000,20000' },
      'baseline-seconds': { type: 'string', default: '5' },
      'max-seconds': { type: 'string', default: '60' },
      dir: { type: 'string', default: join(process.cwd(), '.bm-bench') },
      json: { type: 'string' },
    },
  });
  const size = parseSize(values.size!, '--size');
  const dir = resolve(values.dir!);
  await mkdir(dir, { recursive: true });
  const src = join(dir, 'mirror-src.img');
  const dst = join(dir, 'mirror-dst.img');
  if (!existsSync(src) || (await stat(src)).size !== size) {
    console.error(`making a ${formatBytes(size)} random source ${src}`);
    await makeSampleImage(src, { size, holeFraction: 0 });
  }
  const results: MirrorBenchResult[] = [];
  for (const rate of values.rates!.split(',')) {
    const iops = rate === 'max' ? 0 : Number(rate);
    const base = await baseline(src, size, iops, Number(values['baseline-seconds']));
    console.error(`baseline writer (${rate} IOPS asked): ${base.iops.toFixed(0)} IOPS, p99 ${ms(base.latency.p99)} ms`);
    for (const policy of values.policies!.split(',') as NoConvergencePolicy[]) {
      const r = await mirrorRun(src, dst, size, policy, iops, Number(values['max-seconds']));
      console.error(
        `  ${policy}: ready ${r.readySeconds?.toFixed(1) ?? 'never'} s, copied ${r.copiedPerImageByte.toFixed(2)}× the image, ` +
          `${r.iops.toFixed(0)} IOPS (${((100 * r.iops) / base.iops).toFixed(0)} % of unmirrored), p99 ${ms(r.latency.p99)} ms`,
      );
      results.push({ policy, rate, ...r, baselineIops: base.iops, baselineLatency: base.latency });
    }
  }
  console.log(
    markdownTable(
      ['writer', 'policy', 'ready (s)', 'copied / image', 'IOPS (unmirrored)', 'p50 / p99 / p999 ms (unmirrored)', 'mode at end', 'chunk sizes (every 0.5 s)'],
      results.map((r) => [
        r.rate === 'max' ? 'unthrottled' : `${r.rate} IOPS`,
        r.policy,
        r.readySeconds === null ? 'never' : r.readySeconds.toFixed(1),
        r.copiedPerImageByte.toFixed(2),
        `${r.iops.toFixed(0)} (${r.baselineIops.toFixed(0)}, ${((100 * r.iops) / r.baselineIops).toFixed(0)} %)`,
        `${ms(r.latency.p50)} / ${ms(r.latency.p99)} / ${ms(r.latency.p999)} (${ms(r.baselineLatency.p50)} / ${ms(r.baselineLatency.p99)} / ${ms(r.baselineLatency.p999)})`,
        r.copyMode,
        [...new Set(r.chunkSizes)].map((c) => formatBytes(c)).join(' → '),
      ]),
    ),
  );
  if (values.json) {
    await writeFile(values.json, `${JSON.stringify({ kind: 'mirror', date: new Date().toISOString(), machine: machineInfo(dir), size, results }, null, 2)}\n`);
  }
  await rm(dst, { force: true });
}

await main();

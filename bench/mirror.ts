/**
 * Live-mirror benchmark: mirrors an image while fio does random 4 KiB writes at queue depth 8
 * through an NBD export of the job's interceptor (as a VM's disk would), unthrottled and at fixed
 * rates, and reports time to ready, bytes copied per image byte, fio's IOPS and latency with and
 * without the mirror (the same export over the plain image), and the tuner's chunk sizes.
 *
 *   npm run bench:mirror -- [--size 4G] [--policies report,write-blocking,throttle]
 *                           [--rates max,5000,20000] [--seconds 20] [--runs 1] [--granularity 64K]
 *                           [--latency-target MS] [--copy-mode background|write-blocking]
 *                           [--direct-target] [--timeline] [--dir DIR] [--json FILE]
 *
 * Before each writer run (alone or mirrored) the source's dirty pages are written back, so that
 * no run pays for the write-back of the writes of the run before it.
 *
 * `--direct-target` opens the target with O_DIRECT (the source stays in the page cache).
 *
 * `--timeline` prints, every second of each mirrored run, the writer's writes, the copy mode, the
 * job's status, its dirty bytes, its bytes copied and the tuner's latest choices (to stderr).
 *
 * With several runs, policies alternate within each run and the table shows medians.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { FileDevice } from '../src/io/FileDevice.js';
import type { BlockDevice } from '../src/io/BlockDevice.js';
import { startMirror, type CopyMode, type NoConvergencePolicy, type TuningDecision } from '../src/index.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { machineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';
import { writeBack, writeThrough, type WriterStats } from './lib/fio.js';

interface MirrorBenchResult {
  readonly policy: NoConvergencePolicy;
  readonly rate: string;
  readonly run: number;
  readonly readySeconds: number | null;
  /** Bytes copied until ready, per image byte. */
  readonly copiedPerImageByte: number;
  readonly writer: WriterStats;
  readonly baseline: WriterStats;
  /** The tuner's chunk size every half second. */
  readonly chunkSizes: number[];
  readonly copyModeAtEnd: string;
}

/** What every mirrored run of one invocation shares. */
interface MirrorRunSetup {
  readonly src: string;
  readonly dst: string;
  readonly socket: string;
  readonly size: number;
  readonly seconds: number;
  readonly granularity: number | undefined;
  readonly latencyTarget: number | undefined;
  readonly copyMode: CopyMode;
  readonly directTarget: boolean;
  readonly timeline: boolean;
}

async function mirrorRun(setup: MirrorRunSetup, policy: NoConvergencePolicy, iops: number) {
  const { src, dst, socket, size, seconds, granularity, latencyTarget, copyMode, directTarget, timeline } = setup;
  await rm(dst, { force: true });
  const started = performance.now();
  const target = directTarget ? { kind: 'file' as const, path: dst, role: 'target' as const, writable: true, direct: true } : dst;
  const job = await startMirror({ source: src, target, onNoConvergence: policy, granularity, latencyTarget, copyMode });
  const decisions: TuningDecision[] = [];
  job.on('tuning', (d) => decisions.push(d));
  const chunkSizes: number[] = [];
  const sampler = setInterval(() => chunkSizes.push(decisions.at(-1)?.chunkSize ?? 0), 500);
  const ready = { seconds: null as number | null, copied: 0 };
  job.once('ready', () => {
    ready.seconds = (performance.now() - started) / 1000;
    ready.copied = job.progress().bytesCopied;
  });
  const device = job.device.asBlockDevice();
  let writes = 0;
  const counted: BlockDevice = { ...device, write: (data, offset) => (writes++, device.write(data, offset)) };
  let lastWrites = 0;
  const ticker = timeline
    ? setInterval(() => {
        const p = job.progress();
        const d = decisions.at(-1);
        const t = ((performance.now() - started) / 1000).toFixed(0).padStart(3);
        console.error(
          `  ${t} s: ${String(writes - lastWrites).padStart(6)} writes, ${job.copyMode.padEnd(14)} ${job.status.padEnd(8)} ` +
            `dirty ${formatBytes(p.dirtyBytes).padStart(9)}, copied ${formatBytes(p.bytesCopied).padStart(9)}` +
            (d ? `; tuner: ${formatBytes(d.chunkSize)} chunks, ${formatBytes(d.inFlight)} in flight, pace ${d.pace === undefined ? 'none' : formatBytes(d.pace) + '/s'}, app p99 ${d.appP99 === undefined ? '?' : ms(d.appP99)} ms (target ${d.latencyTarget === undefined ? '?' : ms(d.latencyTarget)})` : ''),
        );
        lastWrites = writes;
      }, 1000)
    : undefined;
  const writer = await writeThrough(timeline ? counted : device, socket, size, seconds, iops);
  clearInterval(sampler);
  clearInterval(ticker);
  const copyModeAtEnd = job.copyMode;
  if (job.status === 'ready') await job.complete();
  else await job.cancel({ force: true });
  await job.close();
  const copied = ready.seconds === null ? job.progress().bytesCopied : ready.copied;
  return { readySeconds: ready.seconds, copiedPerImageByte: copied / size, writer, chunkSizes, copyModeAtEnd };
}

const ms = (micros: number): string => (micros / 1000).toFixed(2);

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '4G' },
      policies: { type: 'string', default: 'report,write-blocking,throttle' },
      rates: { type: 'string', default: 'max,5000,20000' },
      seconds: { type: 'string', default: '20' },
      runs: { type: 'string', default: '1' },
      granularity: { type: 'string' },
      'latency-target': { type: 'string' },
      'copy-mode': { type: 'string', default: 'background' },
      'direct-target': { type: 'boolean', default: false },
      timeline: { type: 'boolean', default: false },
      dir: { type: 'string', default: join(process.cwd(), '.bm-bench') },
      json: { type: 'string' },
    },
  });
  const size = parseSize(values.size!, '--size');
  const seconds = Number(values.seconds);
  const runs = Number(values.runs);
  const granularity = values.granularity === undefined ? undefined : parseSize(values.granularity, '--granularity');
  const latencyTarget = values['latency-target'] === undefined ? undefined : Number(values['latency-target']);
  const dir = resolve(values.dir!);
  await mkdir(dir, { recursive: true });
  const src = join(dir, 'mirror-src.img');
  const dst = join(dir, 'mirror-dst.img');
  const socket = join(dir, 'mirror.sock');
  if (!existsSync(src) || (await stat(src)).size !== size) {
    console.error(`making a ${formatBytes(size)} random source ${src}`);
    await makeSampleImage(src, { size, holeFraction: 0 });
  }
  const setup: MirrorRunSetup = {
    src,
    dst,
    socket,
    size,
    seconds,
    granularity,
    latencyTarget,
    copyMode: values['copy-mode'] as CopyMode,
    directTarget: values['direct-target']!,
    timeline: values.timeline!,
  };
  const results: MirrorBenchResult[] = [];
  for (const rate of values.rates!.split(',')) {
    const iops = rate === 'max' ? 0 : Number(rate);
    const plain = await FileDevice.open({ kind: 'file', path: src, writable: true });
    await plain.flush(); // the run before it left dirty pages: write them back first
    const baseline = await writeThrough(plain, socket, size, seconds, iops);
    await plain.close();
    console.error(`fio alone (${rate} IOPS asked): ${baseline.iops.toFixed(0)} IOPS, p99 ${ms(baseline.p99)} ms`);
    for (let run = 1; run <= runs; run++) {
      for (const policy of values.policies!.split(',') as NoConvergencePolicy[]) {
        await writeBack(src);
        const r = await mirrorRun(setup, policy, iops);
        console.error(
          `  run ${run} ${policy}: ready ${r.readySeconds?.toFixed(1) ?? 'never'} s, copied ${r.copiedPerImageByte.toFixed(2)}× the image, ` +
            `${r.writer.iops.toFixed(0)} IOPS (${((100 * r.writer.iops) / baseline.iops).toFixed(0)} % of unmirrored), p99 ${ms(r.writer.p99)} ms`,
        );
        results.push({ policy, rate, run, ...r, baseline });
      }
    }
  }
  console.log(
    markdownTable(
      ['writer', 'policy', 'ready (s)', 'copied / image', 'IOPS (unmirrored)', 'p50 / p99 / p99.9 ms (unmirrored)', 'mode at end', 'chunk sizes (every 0.5 s)'],
      summarize(results).map(({ first: r, all, last }) => {
        const ready = median(all.map((x) => x.readySeconds ?? Number.POSITIVE_INFINITY));
        const iops = median(all.map((x) => x.writer.iops));
        const each = (f: (x: MirrorBenchResult) => string): string => (all.length > 1 ? ` (${all.map(f).join(' / ')})` : '');
        return [
          r.rate === 'max' ? 'unthrottled' : `${r.rate} IOPS`,
          r.policy,
          (Number.isFinite(ready) ? ready.toFixed(1) : 'never') + each((x) => x.readySeconds?.toFixed(1) ?? 'never'),
          median(all.map((x) => x.copiedPerImageByte)).toFixed(2) + each((x) => x.copiedPerImageByte.toFixed(2)),
          `${iops.toFixed(0)} (${r.baseline.iops.toFixed(0)}, ${((100 * iops) / r.baseline.iops).toFixed(0)} %)`,
          `${ms(median(all.map((x) => x.writer.p50)))} / ${ms(median(all.map((x) => x.writer.p99)))} / ${ms(median(all.map((x) => x.writer.p999)))} ` +
            `(${ms(r.baseline.p50)} / ${ms(r.baseline.p99)} / ${ms(r.baseline.p999)})`,
          last.copyModeAtEnd,
          compress(last.chunkSizes.map((c) => formatBytes(c))),
        ];
      }),
    ),
  );
  if (values.json) {
    await writeFile(values.json, `${JSON.stringify({ kind: 'mirror', date: new Date().toISOString(), machine: machineInfo(dir), size, seconds, results }, null, 2)}\n`);
  }
  await rm(dst, { force: true });
}

/** The runs of each writer rate and policy, in the order they first ran; medians over `all`. */
function summarize(results: readonly MirrorBenchResult[]) {
  const groups = new Map<string, MirrorBenchResult[]>();
  for (const r of results) {
    const key = `${r.rate}/${r.policy}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups.values()].map((all) => ({ first: all[0]!, last: all.at(-1)!, all }));
}

/** `a a a b b a` → `a×3 → b×2 → a`. */
function compress(values: readonly string[]): string {
  const runs: Array<[string, number]> = [];
  for (const v of values) {
    const last = runs.at(-1);
    if (last && last[0] === v) last[1]++;
    else runs.push([v, 1]);
  }
  return runs.map(([v, n]) => (n > 1 ? `${v}×${n}` : v)).join(' → ');
}

await main();

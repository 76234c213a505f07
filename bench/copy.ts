/**
 * Whole-copy benchmark: blockmirror against nbdcopy, qemu-img convert, cp and dd on the same
 * images in one run, every tool ending with its data on disk. Tools alternate within each round
 * (so a noisy minute hurts all of them alike); medians over rounds; ratios to nbdcopy, of wall
 * time and of CPU-seconds (user + system of the tool's processes). Each run also records how much
 * the page cache grew (Cached in /proc/meminfo, before and after).
 *
 * `mirror` is `blockmirror mirror --complete-on-ready` (a live mirror with no writer, switched
 * over once in sync), whose first pass runs on the copy's engine.
 *
 * Variants: `random` (--size of random data), `sparse` (--size, half holes), `sparse64` (64 GiB
 * holding 1 GiB of data in 8 runs, the shape of a VM disk; dd, which reads every hole, skips it).
 *
 *   npm run bench:copy -- [--size 4G] [--runs 5] [--cache warm,cold] [--variants random,sparse,sparse64]
 *                         [--tools blockmirror,mirror,nbdcopy,qemu-img,cp,dd] [--dir DIR] [--json FILE]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { formatBytes, parseSize } from '../src/util/size.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { machineInfo, type MachineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';
import { cachedBytes, childCpuSeconds, dropCaches, has, warm } from './lib/host.js';

const CLI = resolve(import.meta.dirname, '../dist/cli/bin.js');

/** A tool under test: the command that copies `src` to a new `dst` and leaves it on disk. */
interface Tool {
  readonly name: string;
  readonly binary: string;
  readonly commands: (src: string, dst: string) => string[][];
}

const TOOLS: readonly Tool[] = [
  { name: 'blockmirror', binary: process.execPath, commands: (s, d) => [[process.execPath, CLI, 'copy', '--no-progress', s, d]] },
  // A live mirror with no writer, switched over once in sync: its first pass is the copy's engine.
  { name: 'mirror', binary: process.execPath, commands: (s, d) => [[process.execPath, CLI, 'mirror', '--complete-on-ready', '--no-progress', s, d]] },
  { name: 'nbdcopy', binary: 'nbdcopy', commands: (s, d) => [['nbdcopy', '--flush', s, d]] },
  {
    name: 'qemu-img',
    binary: 'qemu-img',
    commands: (s, d) => [['qemu-img', 'convert', '-m', '16', '-W', '-f', 'raw', '-O', 'raw', s, d], ['sync', '-d', d]],
  },
  { name: 'cp', binary: 'cp', commands: (s, d) => [['cp', '--sparse=auto', s, d], ['sync', '-d', d]] },
  { name: 'dd', binary: 'dd', commands: (s, d) => [['dd', `if=${s}`, `of=${d}`, 'bs=1M', 'conv=fdatasync,sparse', 'status=none']] },
];

/** The benchmark's JSON output, also what `bench:compare` reads. */
export interface CopyBenchReport {
  readonly kind: 'copy';
  readonly date: string;
  readonly machine: MachineInfo;
  readonly size: number;
  readonly runs: number;
  readonly results: CopyBenchResult[];
}

export interface CopyBenchResult {
  readonly tool: string;
  readonly variant: string;
  readonly cache: string;
  /** Bytes of the source image. */
  readonly size: number;
  readonly seconds: number[];
  readonly median: number;
  /** CPU-seconds (user + system) of each run, and their median. */
  readonly cpuSeconds: number[];
  readonly cpuMedian: number;
  /** Growth of the page cache over each run, bytes, and its median. */
  readonly cacheGrowth: number[];
  readonly cacheGrowthMedian: number;
  /** Slowest run over the median (the target is at most 2). */
  readonly worstToMedian: number;
  /** Median divided by nbdcopy's median for the same variant and cache (absent without nbdcopy). */
  readonly ratioToNbdcopy?: number;
  /** CPU median divided by nbdcopy's. */
  readonly cpuRatioToNbdcopy?: number;
}

/** The sparse64 variant: 64 GiB holding 1 GiB of data in 8 runs of 128 MiB. */
const SPARSE64 = { size: 64 * 2 ** 30, runs: 8, runBytes: 128 * 2 ** 20 } as const;

/** One measured run: wall seconds, CPU-seconds of the tool's processes, page-cache growth. */
interface RunMeasure {
  readonly seconds: number;
  readonly cpuSeconds: number;
  readonly cacheGrowth: number;
}

async function makeSparse64(path: string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(SPARSE64.size);
    const buf = Buffer.allocUnsafe(8 << 20);
    const stride = SPARSE64.size / SPARSE64.runs;
    for (let r = 0; r < SPARSE64.runs; r++) {
      for (let done = 0; done < SPARSE64.runBytes; done += buf.length) {
        randomFillSync(buf);
        await fh.write(buf, 0, buf.length, r * stride + (100 << 20) + done);
      }
    }
  } finally {
    await fh.close();
  }
}

function timeTool(tool: Tool, src: string, dst: string): RunMeasure {
  const cache0 = cachedBytes();
  const cpu0 = childCpuSeconds();
  const t0 = performance.now();
  for (const [cmd, ...args] of tool.commands(src, dst)) {
    const r = spawnSync(cmd!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${tool.name} failed (${r.status}): ${r.stderr?.toString().trim()}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, cpuSeconds: childCpuSeconds() - cpu0, cacheGrowth: Math.max(0, cachedBytes() - cache0) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '4G' },
      runs: { type: 'string', default: '5' },
      cache: { type: 'string', default: 'warm,cold' },
      variants: { type: 'string', default: 'random,sparse' },
      tools: { type: 'string', default: TOOLS.map((t) => t.name).join(',') },
      dir: { type: 'string', default: join(process.cwd(), '.bm-bench') },
      json: { type: 'string' },
      keep: { type: 'boolean', default: false },
    },
  });
  if (!existsSync(CLI)) throw new Error('run `npm run build` first');
  const size = parseSize(values.size!, '--size');
  const runs = Number(values.runs);
  const wanted = new Set(values.tools!.split(','));
  const tools = TOOLS.filter((t) => wanted.has(t.name));
  for (const t of tools.filter((t) => !has(t.binary))) console.error(`skipping ${t.name}: ${t.binary} is not installed`);
  const active = tools.filter((t) => has(t.binary));
  let caches = values.cache!.split(',');
  if (caches.includes('cold') && !dropCaches()) {
    console.error('skipping cold-cache runs: cannot write /proc/sys/vm/drop_caches (run as root)');
    caches = caches.filter((c) => c !== 'cold');
  }
  const dir = resolve(values.dir!);
  await mkdir(dir, { recursive: true });

  const results: CopyBenchResult[] = [];
  for (const variant of values.variants!.split(',')) {
    const src = join(dir, `src-${variant}.img`);
    const dst = join(dir, 'dst.img');
    const variantSize = variant === 'sparse64' ? SPARSE64.size : size;
    if (!existsSync(src) || (await stat(src)).size !== variantSize) {
      console.error(`making ${formatBytes(variantSize)} ${variant} source ${src}`);
      if (variant === 'sparse64') await makeSparse64(src);
      else await makeSampleImage(src, { size, holeFraction: variant === 'sparse' ? 0.5 : 0 });
    }
    // dd reads every hole of a 64 GiB image; the others skip them.
    const variantTools = variant === 'sparse64' ? active.filter((t) => t.name !== 'dd') : active;
    for (const cache of caches) {
      const runsOf = new Map<string, RunMeasure[]>(variantTools.map((t) => [t.name, []]));
      for (let round = 0; round < runs; round++) {
        // Rotate the order each round so no tool always runs first (or right after a cache drop).
        const order = variantTools.map((_, i) => variantTools[(i + round) % variantTools.length]!);
        for (const tool of order) {
          await rm(dst, { force: true });
          execFileSync('sync');
          if (cache === 'cold') dropCaches();
          else if (variant !== 'sparse64') warm(src); // warming 64 GiB of holes would fill the cache with zeros
          const m = timeTool(tool, src, dst);
          runsOf.get(tool.name)!.push(m);
          console.error(`  ${variant}/${cache} round ${round + 1}: ${tool.name} ${m.seconds.toFixed(2)} s, ${m.cpuSeconds.toFixed(2)} CPU-s, cache +${formatBytes(m.cacheGrowth)}`);
        }
      }
      const nbd = runsOf.get('nbdcopy');
      const nbdWall = nbd?.length ? median(nbd.map((m) => m.seconds)) : undefined;
      const nbdCpu = nbd?.length ? median(nbd.map((m) => m.cpuSeconds)) : undefined;
      for (const [tool, ms] of runsOf) {
        const seconds = ms.map((m) => m.seconds);
        const cpuSeconds = ms.map((m) => m.cpuSeconds);
        const cacheGrowth = ms.map((m) => m.cacheGrowth);
        const wall = median(seconds);
        const cpu = median(cpuSeconds);
        results.push({
          tool,
          variant,
          cache,
          size: variantSize,
          seconds,
          median: wall,
          cpuSeconds,
          cpuMedian: cpu,
          cacheGrowth,
          cacheGrowthMedian: median(cacheGrowth),
          worstToMedian: Math.max(...seconds) / wall,
          ...(nbdWall ? { ratioToNbdcopy: wall / nbdWall } : {}),
          ...(nbdCpu ? { cpuRatioToNbdcopy: cpu / nbdCpu } : {}),
        });
      }
    }
    await rm(dst, { force: true });
    if (!values.keep) await rm(src, { force: true });
  }

  const report: CopyBenchReport = { kind: 'copy', date: new Date().toISOString(), machine: machineInfo(dir), size, runs, results };
  const GiB = 2 ** 30;
  console.log(
    markdownTable(
      ['tool', 'image', 'cache', 'median s', 'runs (s)', 'worst/median', 'CPU-s', 'CPU-s/GiB', 'cache growth', 'wall / nbdcopy', 'CPU / nbdcopy'],
      results.map((r) => [
        r.tool,
        r.variant,
        r.cache,
        r.median.toFixed(2),
        r.seconds.map((s) => s.toFixed(2)).join(', '),
        r.worstToMedian.toFixed(2),
        r.cpuMedian.toFixed(2),
        (r.cpuMedian / (r.size / GiB)).toFixed(2),
        formatBytes(r.cacheGrowthMedian),
        r.ratioToNbdcopy === undefined ? '-' : r.ratioToNbdcopy.toFixed(2),
        r.cpuRatioToNbdcopy === undefined ? '-' : r.cpuRatioToNbdcopy.toFixed(2),
      ]),
    ),
  );
  if (values.json) await writeFile(values.json, `${JSON.stringify(report, null, 2)}\n`);
  if (!values.keep) await rm(dir, { recursive: true, force: true });
}

await main();

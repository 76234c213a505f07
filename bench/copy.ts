/**
 * Whole-copy benchmark: blockmirror against nbdcopy, qemu-img convert, cp and dd on the same
 * images in one run, every tool ending with its data on disk. Tools alternate within each round
 * (so a noisy minute hurts all of them alike); medians over rounds; ratios to nbdcopy.
 *
 *   npm run bench:copy -- [--size 4G] [--runs 3] [--cache warm,cold] [--variants random,sparse]
 *                         [--tools blockmirror,nbdcopy,qemu-img,cp,dd] [--dir DIR] [--json FILE]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { formatBytes, parseSize } from '../src/util/size.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { machineInfo, type MachineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';

const CLI = resolve(import.meta.dirname, '../dist/cli/bin.js');

/** A tool under test: the command that copies `src` to a new `dst` and leaves it on disk. */
interface Tool {
  readonly name: string;
  readonly binary: string;
  readonly commands: (src: string, dst: string) => string[][];
}

const TOOLS: readonly Tool[] = [
  { name: 'blockmirror', binary: process.execPath, commands: (s, d) => [[process.execPath, CLI, 'copy', '--no-progress', s, d]] },
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
  readonly seconds: number[];
  readonly median: number;
  /** Median divided by nbdcopy's median for the same variant and cache (absent without nbdcopy). */
  readonly ratioToNbdcopy?: number;
}

function has(binary: string): boolean {
  return binary === process.execPath || spawnSync('sh', ['-c', `command -v ${binary}`]).status === 0;
}

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function warm(path: string): void {
  execFileSync('sh', ['-c', `cat '${path}' > /dev/null`]);
}

function timeTool(tool: Tool, src: string, dst: string): number {
  const t0 = performance.now();
  for (const [cmd, ...args] of tool.commands(src, dst)) {
    const r = spawnSync(cmd!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${tool.name} failed (${r.status}): ${r.stderr?.toString().trim()}`);
  }
  return (performance.now() - t0) / 1000;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '4G' },
      runs: { type: 'string', default: '3' },
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
    const holeFraction = variant === 'sparse' ? 0.5 : 0;
    if (!existsSync(src) || (await stat(src)).size !== size) {
      console.error(`making ${formatBytes(size)} ${variant} source ${src}`);
      await makeSampleImage(src, { size, holeFraction });
    }
    for (const cache of caches) {
      const times = new Map<string, number[]>(active.map((t) => [t.name, []]));
      for (let round = 0; round < runs; round++) {
        // Rotate the order each round so no tool always runs first (or right after a cache drop).
        const order = active.map((_, i) => active[(i + round) % active.length]!);
        for (const tool of order) {
          await rm(dst, { force: true });
          execFileSync('sync');
          if (cache === 'cold') dropCaches();
          else warm(src);
          const s = timeTool(tool, src, dst);
          times.get(tool.name)!.push(s);
          console.error(`  ${variant}/${cache} round ${round + 1}: ${tool.name} ${s.toFixed(2)} s`);
        }
      }
      const nbd = times.get('nbdcopy');
      const nbdMedian = nbd && nbd.length ? median(nbd) : undefined;
      for (const [tool, seconds] of times) {
        const m = median(seconds);
        results.push({ tool, variant, cache, seconds, median: m, ...(nbdMedian ? { ratioToNbdcopy: m / nbdMedian } : {}) });
      }
    }
    await rm(dst, { force: true });
    if (!values.keep) await rm(src, { force: true });
  }

  const report: CopyBenchReport = { kind: 'copy', date: new Date().toISOString(), machine: machineInfo(dir), size, runs, results };
  console.log(
    markdownTable(
      ['tool', 'image', 'cache', 'median s', 'runs (s)', 'ratio to nbdcopy'],
      results.map((r) => [
        r.tool,
        r.variant,
        r.cache,
        r.median.toFixed(2),
        r.seconds.map((s) => s.toFixed(2)).join(', '),
        r.ratioToNbdcopy === undefined ? '-' : r.ratioToNbdcopy.toFixed(2),
      ]),
    ),
  );
  if (values.json) await writeFile(values.json, `${JSON.stringify(report, null, 2)}\n`);
  if (!values.keep) await rm(dir, { recursive: true, force: true });
}

await main();

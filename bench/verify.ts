/**
 * Verify benchmark: `blockmirror verify A B` against `qemu-img compare A B` on two identical
 * images (qemu-img stops at the first difference; on identical images both read everything),
 * warm (both images in the page cache) and cold (the cache dropped before each tool: root only).
 * Tools alternate within each round; the table shows medians, CPU-seconds (user + system of the
 * tool's processes) and blockmirror's speed as a share of qemu-img's.
 *
 *   npm run bench:verify -- [--size 4G] [--rounds 5] [--caches warm,cold] [--dir DIR] [--json FILE]
 */
import { spawnSync } from 'node:child_process';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { childCpuSeconds, dropCaches, has, warm } from './lib/host.js';
import { machineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';

const CLI = resolve(import.meta.dirname, '../dist/cli/bin.js');

interface Tool {
  readonly name: string;
  readonly command: (a: string, b: string) => string[];
}

const TOOLS: readonly Tool[] = [
  { name: 'blockmirror verify', command: (a, b) => [process.execPath, CLI, 'verify', a, b, '--no-progress'] },
  { name: 'qemu-img compare', command: (a, b) => ['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', a, b] },
];

function timeTool(tool: Tool, a: string, b: string): { seconds: number; cpuSeconds: number } {
  const cpu0 = childCpuSeconds();
  const t0 = performance.now();
  const [cmd, ...args] = tool.command(a, b);
  const r = spawnSync(cmd!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${tool.name} exited with ${r.status}: ${r.stderr?.toString().trim()}`);
  return { seconds, cpuSeconds: childCpuSeconds() - cpu0 };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '4G' },
      rounds: { type: 'string', default: '5' },
      caches: { type: 'string', default: 'warm,cold' },
      dir: { type: 'string', default: 'bench-data' },
      json: { type: 'string' },
    },
  });
  if (!has('qemu-img')) throw new Error('qemu-img is not installed (apt-get install qemu-utils)');
  const size = parseSize(values.size!);
  const rounds = Number(values.rounds);
  const caches = values.caches!.split(',');
  if (caches.includes('cold') && !dropCaches()) throw new Error('cold runs drop the page cache: run as root, or --caches warm');
  await mkdir(values.dir!, { recursive: true });
  const a = join(values.dir!, 'verify-a.img');
  const b = join(values.dir!, 'verify-b.img');
  console.error(`making two identical ${formatBytes(size)} images`);
  await makeSampleImage(a, { size });
  await copyFile(a, b);
  const rows: string[][] = [];
  const results: Array<Record<string, unknown>> = [];
  try {
    for (const cache of caches) {
      const runs = new Map<string, Array<{ seconds: number; cpuSeconds: number }>>(TOOLS.map((t) => [t.name, []]));
      for (let round = 0; round < rounds; round++) {
        const order = round % 2 === 0 ? TOOLS : [...TOOLS].reverse();
        for (const tool of order) {
          if (cache === 'cold') dropCaches();
          else {
            warm(a);
            warm(b);
          }
          const m = timeTool(tool, a, b);
          runs.get(tool.name)!.push(m);
          console.error(`  ${cache} round ${round + 1}: ${tool.name} ${m.seconds.toFixed(2)} s, ${m.cpuSeconds.toFixed(2)} CPU-s`);
        }
      }
      const qemu = median(runs.get('qemu-img compare')!.map((m) => m.seconds));
      for (const tool of TOOLS) {
        const ms = runs.get(tool.name)!;
        const seconds = median(ms.map((m) => m.seconds));
        const cpu = median(ms.map((m) => m.cpuSeconds));
        const speedShare = qemu / seconds;
        results.push({ tool: tool.name, cache, seconds: ms.map((m) => m.seconds), cpuSeconds: ms.map((m) => m.cpuSeconds), medianSeconds: seconds, medianCpu: cpu, speedShareOfQemu: speedShare });
        rows.push([tool.name, cache, seconds.toFixed(2), ms.map((m) => m.seconds.toFixed(2)).join(' '), cpu.toFixed(2), formatBytes(size / seconds) + '/s', speedShare.toFixed(2)]);
      }
    }
  } finally {
    await rm(a, { force: true });
    await rm(b, { force: true });
  }
  console.log(markdownTable(['tool', 'cache', 'median s', 'runs (s)', 'CPU-s', 'rate', 'speed / qemu-img'], rows));
  if (values.json) await writeFile(values.json, `${JSON.stringify({ kind: 'verify', date: new Date().toISOString(), size, rounds, machine: machineInfo(values.dir!), results }, null, 2)}\n`);
}

await main();

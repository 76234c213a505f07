/**
 * Whole-copy benchmark into an NBD target: `blockmirror copy` against `nbdcopy --flush`, both
 * writing a raw image into the same kind of qemu-nbd export (a fresh sparse target per run),
 * alternating, several runs each, medians. Both end with the data on disk (blockmirror always
 * flushes; nbdcopy is asked to). Also runs the design checks behind blockmirror's one
 * connection per export: does nbdcopy gain from 4 connections where the server allows them?
 *
 *   npx tsx bench/nbd.ts [--size 1G] [--runs 5] [--dir DIR] [--json FILE]
 *
 * Then the server side: `nbdcopy --no-extents URI null:` reading the whole source out of
 * `blockmirror serve --read-only` against out of `qemu-nbd --read-only`, alternating.
 *
 * Prints Markdown tables (paste into docs/perf.md, "## NBD").
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist/cli/bin.js');

interface Args {
  size: number;
  runs: number;
  dir: string | undefined;
  json: string | undefined;
}

function parseArgs(argv: readonly string[]): Args {
  const args: Args = { size: 1 << 30, runs: 5, dir: undefined, json: undefined };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case '--size':
        args.size = parseSize(value!, '--size');
        i++;
        break;
      case '--runs':
        args.runs = Number(value);
        i++;
        break;
      case '--dir':
        args.dir = value;
        i++;
        break;
      case '--json':
        args.json = value;
        i++;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]} (use --size, --runs, --dir, --json)`);
    }
  }
  return args;
}

const execFileAsync = promisify(execFile);

/** Runs a command to completion; rejects (with its stderr) unless it exits 0. */
async function mustExec(cmd: string, args: readonly string[]): Promise<string> {
  return (await execFileAsync(cmd, [...args], { maxBuffer: 16 << 20 })).stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A qemu-nbd export of a fresh sparse target; `stop` kills it and waits until it is gone. */
async function startQemuNbd(dir: string, size: number, extra: readonly string[]): Promise<{ uri: string; stop: () => Promise<void> }> {
  const target = join(dir, 'target.img');
  const socket = join(dir, 'target.sock');
  const pidFile = join(dir, 'qemu-nbd.pid');
  await rm(target, { force: true });
  await writeFile(target, '');
  await truncate(target, size);
  await mustExec('qemu-nbd', ['--fork', `--pid-file=${pidFile}`, `--socket=${socket}`, '-f', 'raw', ...extra, target]);
  let pid = 0;
  for (let i = 0; i < 500 && pid === 0; i++) {
    pid = await readFile(pidFile, 'utf8').then((t) => Number(t.trim()), () => 0);
    if (pid === 0) await new Promise((r) => setTimeout(r, 10));
  }
  return {
    uri: `nbd+unix:///?socket=${socket}`,
    stop: async () => {
      if (pid > 0 && alive(pid)) process.kill(pid, 'SIGTERM');
      while (pid > 0 && alive(pid)) await new Promise((r) => setTimeout(r, 10));
      await rm(target, { force: true });
    },
  };
}

/** One contender: how to run it against a target URI. */
interface Contender {
  readonly name: string;
  /** Extra qemu-nbd options for its target. */
  readonly server: readonly string[];
  readonly command: (source: string, uri: string) => [string, string[]];
}

const contenders: readonly Contender[] = [
  { name: 'blockmirror copy', server: [], command: (s, u) => ['node', [cli, 'copy', '--no-progress', s, u]] },
  { name: 'nbdcopy --flush', server: [], command: (s, u) => ['nbdcopy', ['--flush', s, u]] },
];

/** Design checks: does more than one connection help against qemu-nbd (which serves them all from one thread)? */
const designChecks: readonly Contender[] = [
  { name: 'nbdcopy --flush -C 1 (qemu-nbd --shared=0)', server: ['--shared=0'], command: (s, u) => ['nbdcopy', ['--flush', '-C', '1', s, u]] },
  { name: 'nbdcopy --flush -C 4 (qemu-nbd --shared=0)', server: ['--shared=0'], command: (s, u) => ['nbdcopy', ['--flush', '-C', '4', s, u]] },
  { name: 'blockmirror copy (qemu-nbd --shared=0)', server: ['--shared=0'], command: (s, u) => ['node', [cli, 'copy', '--no-progress', s, u]] },
];

async function timeOne(c: Contender, dir: string, source: string, size: number): Promise<number> {
  const server = await startQemuNbd(dir, size, c.server);
  try {
    const [cmd, args] = c.command(source, server.uri);
    const t0 = performance.now();
    await mustExec(cmd, args);
    return (performance.now() - t0) / 1000;
  } finally {
    await server.stop();
  }
}

/** A read-only export of `source` by `blockmirror serve` or qemu-nbd, for the server-side rows. */
async function startReadOnlyServer(kind: 'blockmirror' | 'qemu-nbd', dir: string, source: string): Promise<{ uri: string; stop: () => Promise<void> }> {
  const socket = join(dir, `${kind}.sock`);
  const uri = `nbd+unix:///?socket=${socket}`;
  if (kind === 'qemu-nbd') {
    const pidFile = join(dir, 'serve-qemu.pid');
    await mustExec('qemu-nbd', ['--fork', '--persistent', `--pid-file=${pidFile}`, `--socket=${socket}`, '--read-only', '-f', 'raw', source]);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    return {
      uri,
      stop: async () => {
        process.kill(pid, 'SIGTERM');
        while (alive(pid)) await new Promise((r) => setTimeout(r, 10));
      },
    };
  }
  const child: ChildProcess = spawn('node', [cli, 'serve', source, '--read-only', '--export', uri], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`blockmirror serve exited ${code}`)));
  });
  return {
    uri,
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function timeServeRead(uri: string): Promise<number> {
  const t0 = performance.now();
  await mustExec('nbdcopy', ['--no-extents', uri, 'null:']);
  return (performance.now() - t0) / 1000;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function table(header: string, base: number, size: number, rows: readonly [string, readonly number[]][]): string[] {
  return [
    `| ${header} | median s | min s | max s | MiB/s | vs baseline |`,
    `|---|---:|---:|---:|---:|---:|`,
    ...rows.map(([name, ts]) => {
      const m = median(ts);
      return `| ${name} | ${m.toFixed(2)} | ${Math.min(...ts).toFixed(2)} | ${Math.max(...ts).toFixed(2)} | ${(size / 2 ** 20 / m).toFixed(0)} | ${(m / base).toFixed(2)}× |`;
    }),
  ];
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (!existsSync(cli)) throw new Error(`${cli} is missing: run \`npm run build\` first (or npm run bench:nbd)`);
  const dir = await mkdtemp(join(args.dir ?? tmpdir(), 'bm-bench-nbd-'));
  const source = join(dir, 'source.img');
  try {
    process.stderr.write(`bench/nbd: ${formatBytes(args.size)} source (random data, 25% holes) in ${dir}\n`);
    await makeSampleImage(source, { size: args.size, holeFraction: 0.25 });
    await mustExec('dd', [`if=${source}`, 'of=/dev/null', 'bs=4M', 'status=none']); // into the page cache, for both alike
    const all = [...contenders, ...designChecks];
    const times = new Map<string, number[]>(all.map((c) => [c.name, []]));
    // Warm-up (not counted): node, qemu-nbd and the page cache.
    for (const c of contenders) await timeOne(c, dir, source, args.size);
    for (let run = 0; run < args.runs; run++) {
      for (const c of all) {
        const t = await timeOne(c, dir, source, args.size);
        times.get(c.name)!.push(t);
        process.stderr.write(`  run ${run + 1}/${args.runs} ${c.name}: ${t.toFixed(2)} s\n`);
      }
    }
    const copyRows = all.map((c) => [c.name, times.get(c.name)!] as [string, number[]]);
    const copyTable = table('copy into qemu-nbd (raw, unix socket); baseline nbdcopy --flush', median(times.get(contenders[1]!.name)!), args.size, copyRows);

    // Server side: read the whole source out of each server, alternating.
    const serveTimes: Record<string, number[]> = { 'blockmirror serve --read-only': [], 'qemu-nbd --read-only': [] };
    for (let run = 0; run < args.runs + 1; run++) {
      for (const kind of ['blockmirror', 'qemu-nbd'] as const) {
        const server = await startReadOnlyServer(kind, dir, source);
        try {
          const t = await timeServeRead(server.uri);
          if (run > 0) serveTimes[kind === 'blockmirror' ? 'blockmirror serve --read-only' : 'qemu-nbd --read-only']!.push(t); // run 0 warms up
          process.stderr.write(`  serve run ${run}/${args.runs} ${kind}: ${t.toFixed(2)} s\n`);
        } finally {
          await server.stop();
        }
      }
    }
    const serveTable = table(
      'nbdcopy --no-extents out of (server); baseline qemu-nbd',
      median(serveTimes['qemu-nbd --read-only']!),
      args.size,
      Object.entries(serveTimes),
    );
    const machine = `${cpus().length} × ${cpus()[0]?.model.trim() ?? 'cpu'}, ${formatBytes(totalmem())} RAM, node ${process.version}`;
    process.stdout.write(
      `\n${formatBytes(args.size)} source, ${args.runs} runs each, alternating; ${machine}\n\n${copyTable.join('\n')}\n\n${serveTable.join('\n')}\n`,
    );
    if (args.json) {
      const data = { size: args.size, runs: args.runs, machine, copy: Object.fromEntries(times), serve: serveTimes };
      await writeFile(args.json, JSON.stringify(data, null, 2));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

/**
 * The same QMP session against qemu-storage-daemon and against `blockmirror daemon`: the same
 * start-up options, the same image, the same fio writer (4 KiB random writes, iodepth 8, through
 * each daemon's own NBD export), alternating daemons within each round.
 *
 *   npm run bench:qmp -- [--sizes 512M,4G] [--writers none,3000,max] [--runs 3] [--fio-seconds 15]
 *                        [--daemons qemu-storage-daemon,blockmirror,mirror-command] [--writer-after-ready]
 *                        [--dir DIR] [--json FILE]
 *
 * Writer profiles: `none` (no writer: the job alone), a fixed rate in IOPS (fio --rate_iops), or
 * `max` (unthrottled). One round, per daemon: start it (--blockdev src, --nbd-server, --export
 * writable, --chardev + --monitor), blockdev-add a fresh sparse target, start fio (if any), one
 * second later blockdev-mirror sync=full; time to BLOCK_JOB_READY; when fio has finished (at
 * once without a writer), block-job-complete and BLOCK_JOB_COMPLETED (offset: bytes the job
 * copied); quit. Daemons alternate within each round. Also one fio run per daemon with no job,
 * for the writer's baseline. Prints a table per image size and a table of blockmirror/QEMU
 * ratios of the medians: time to ready, bytes copied, writer IOPS and writer p99, with the
 * CPU-seconds the contender's process (all its threads) used from the job's start until the writer
 * ended (until ready without one).
 *
 * `--writer-after-ready`: fio starts once the job is READY instead (time to ready is then the
 * job's alone), measuring what keeping the target in sync costs the writer and the CPU.
 *
 * `mirror-command` is `blockmirror mirror SRC DST --export URI --json`, the same job from the
 * command line (its first pass included): its export exists once the job runs, so fio starts as
 * the job does (not a second before); time to ready runs from its `start` event to its `ready`
 * event; SIGUSR1 completes it. Its writer baseline is the blockmirror daemon's (the same NBD server).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm, truncate, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { startDaemon, type DaemonBinary, type RunningDaemon } from '../test/helpers/daemon.js';
import { QmpClient } from '../test/helpers/qmpClient.js';
import { CliProcess } from './lib/mirrorCli.js';
import { machineInfo } from './lib/machine.js';
import { processCpuSeconds } from './lib/host.js';
import { markdownTable, median } from './lib/stats.js';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '512M,4G' },
    writers: { type: 'string', default: 'none,3000,max' },
    runs: { type: 'string', default: '3' },
    'fio-seconds': { type: 'string', default: '15' },
    dir: { type: 'string' },
    json: { type: 'string' },
    daemons: { type: 'string', default: 'qemu-storage-daemon,blockmirror,mirror-command' },
    'writer-after-ready': { type: 'boolean', default: false },
  },
});
const sizes = values.sizes!.split(',').map((t) => parseSize(t, '--sizes'));
const writers = values.writers!.split(',').map(parseWriter);
const runs = Number(values.runs);
const fioSeconds = Number(values['fio-seconds']);
const dir = resolve(values.dir ?? join(process.cwd(), 'bench-qmp-tmp'));
const afterReady = values['writer-after-ready']!;

/** A writer profile: no writer, a fixed rate in IOPS, or unthrottled. */
type WriterProfile = { readonly kind: 'none' } | { readonly kind: 'rate'; readonly iops: number } | { readonly kind: 'max' };

function parseWriter(text: string): WriterProfile {
  if (text === 'none') return { kind: 'none' };
  if (text === 'max') return { kind: 'max' };
  const iops = Number(text);
  if (!Number.isSafeInteger(iops) || iops <= 0) throw new Error(`--writers: none, max or a rate in IOPS, not ${text}`);
  return { kind: 'rate', iops };
}

function writerName(w: WriterProfile): string {
  return w.kind === 'rate' ? `${w.iops} IOPS` : w.kind === 'none' ? 'no writer' : 'unthrottled';
}

function hasBinary(bin: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => existsSync(join(d, bin)));
}

interface FioResult {
  iops: number;
  p99us: number;
}

/** fio through an NBD export: 4 KiB random writes, iodepth 8, for `seconds`, at `iops` (0: unthrottled). */
function fio(socket: string, size: number, seconds: number, iops: number): Promise<FioResult> {
  return new Promise((done, fail) => {
    const child = spawn('fio', [
      '--name=writer', '--ioengine=nbd', `--uri=nbd+unix:///src?socket=${socket}`, '--rw=randwrite', '--bs=4k', '--iodepth=8',
      `--size=${size}`, '--time_based', `--runtime=${seconds}`, '--output-format=json',
      ...(iops > 0 ? [`--rate_iops=${iops}`] : []),
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => {
      if (code !== 0) return fail(new Error(`fio exited ${code}: ${err}`));
      const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ write: { iops: number; clat_ns: { percentile: Record<string, number> } } }> }).jobs[0]!;
      done({ iops: job.write.iops, p99us: job.write.clat_ns.percentile['99.000000']! / 1000 });
    });
  });
}

/** What is measured: a daemon driven over QMP, or `blockmirror mirror` from the command line. */
type Contender = DaemonBinary | 'mirror-command';
const DAEMONS = values.daemons!.split(',') as Contender[];

async function start(binary: DaemonBinary): Promise<{ d: RunningDaemon; qmp: QmpClient; nbd: string }> {
  const nbd = join(dir, 'nbd.sock');
  const qmpPath = join(dir, 'qmp.sock');
  const d = await startDaemon([
    '--blockdev', `driver=file,node-name=src,filename=${join(dir, 'src.img')}`,
    '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
    '--export', 'type=nbd,id=e0,node-name=src,writable=on',
    '--chardev', `socket,id=m0,path=${qmpPath},server=on,wait=off`,
    '--monitor', 'chardev=m0',
  ], { qmp: qmpPath, binary });
  return { d, qmp: await QmpClient.connect(qmpPath), nbd };
}

async function stop(s: { d: RunningDaemon; qmp: QmpClient }): Promise<void> {
  await s.qmp.execute('quit');
  await s.d.exited;
  await rm(join(dir, 'qmp.sock'), { force: true });
  await rm(join(dir, 'nbd.sock'), { force: true });
}

interface RoundResult {
  daemon: Contender;
  size: number;
  writer: string;
  readySeconds: number;
  copiedRatio: number;
  completeSeconds: number;
  /** The writer's, during the job (NaN without a writer). */
  iops: number;
  p99us: number;
  /** CPU-seconds of the contender's process from the job's start until the writer ended (until ready without one). */
  cpuSeconds: number;
}

/**
 * Starts the writer (if any) before the job or once it is ready (`--writer-after-ready`), then
 * waits for READY and for the writer: when the writer starts, time to ready, the writer's figures,
 * and the process's CPU-seconds from the job's start.
 */
async function runJob(
  profile: WriterProfile,
  pid: number,
  nbd: string,
  size: number,
  startJob: () => Promise<void>,
  ready: () => Promise<unknown>,
  headStartMs: number,
): Promise<{ readySeconds: number; writer: FioResult; cpuSeconds: number }> {
  const startWriter = (): Promise<FioResult> | undefined => (profile.kind === 'none' ? undefined : fio(nbd, size, fioSeconds, profile.kind === 'rate' ? profile.iops : 0));
  let writer = afterReady ? undefined : startWriter();
  if (writer && headStartMs > 0) await new Promise((r) => setTimeout(r, headStartMs));
  const cpu0 = processCpuSeconds(pid);
  const t0 = performance.now();
  await startJob();
  await ready();
  const readySeconds = (performance.now() - t0) / 1000;
  if (afterReady) writer = startWriter();
  const w = (await writer) ?? { iops: Number.NaN, p99us: Number.NaN };
  return { readySeconds, writer: w, cpuSeconds: processCpuSeconds(pid) - cpu0 };
}

async function round(binary: Contender, size: number, profile: WriterProfile): Promise<RoundResult> {
  if (binary === 'mirror-command') return commandRound(size, profile);
  const dst = join(dir, 'dst.img');
  await rm(dst, { force: true });
  await writeFile(dst, '');
  await truncate(dst, size);
  const s = await start(binary);
  try {
    await s.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    const { readySeconds, writer: w, cpuSeconds } = await runJob(
      profile,
      s.d.child.pid!,
      s.nbd,
      size,
      async () => void (await s.qmp.execute('blockdev-mirror', { 'job-id': 'job0', device: 'src', target: 'dst', sync: 'full' })),
      () => s.qmp.waitEvent('BLOCK_JOB_READY', () => true, 600_000),
      1000,
    );
    const t1 = performance.now();
    await s.qmp.execute('block-job-complete', { device: 'job0' });
    const done = await s.qmp.waitEvent('BLOCK_JOB_COMPLETED', () => true, 600_000);
    const completeSeconds = (performance.now() - t1) / 1000;
    if (done.data!.error) throw new Error(`${binary}: job failed: ${String(done.data!.error)}`);
    return { daemon: binary, size, writer: writerName(profile), readySeconds, copiedRatio: (done.data!.offset as number) / size, completeSeconds, iops: w.iops, p99us: w.p99us, cpuSeconds };
  } finally {
    await stop(s);
  }
}

/** The same round through `blockmirror mirror --export` (see the header). */
async function commandRound(size: number, profile: WriterProfile): Promise<RoundResult> {
  const dst = join(dir, 'dst.img');
  await rm(dst, { force: true });
  const nbd = join(dir, 'nbd.sock');
  const cli = new CliProcess(['mirror', join(dir, 'src.img'), dst, '--export', `nbd+unix:///src?socket=${nbd}`, '--json']);
  try {
    // Its export exists once the job runs: the writer starts with the job, not a second before.
    await cli.event('start');
    const { readySeconds, writer: w, cpuSeconds } = await runJob(profile, cli.child.pid!, nbd, size, async () => {}, () => cli.event('ready'), 0);
    const t1 = performance.now();
    cli.child.kill('SIGUSR1');
    const done = await cli.event('completed');
    const completeSeconds = (performance.now() - t1) / 1000;
    return { daemon: 'mirror-command', size, writer: writerName(profile), readySeconds, copiedRatio: (done.offset as number) / size, completeSeconds, iops: w.iops, p99us: w.p99us, cpuSeconds };
  } finally {
    cli.child.kill('SIGINT'); // it serves the target until told to stop
    await cli.exited;
    await rm(nbd, { force: true });
  }
}

async function baseline(binary: DaemonBinary, size: number, iops: number): Promise<FioResult> {
  const s = await start(binary);
  try {
    return await fio(s.nbd, size, Math.min(fioSeconds, 10), iops);
  } finally {
    await stop(s);
  }
}

async function main(): Promise<void> {
  const daemons = DAEMONS.filter((b) => b === 'blockmirror' || b === 'mirror-command' || hasBinary(b));
  if (!daemons.includes('qemu-storage-daemon')) {
    console.error('qemu-storage-daemon is not installed (Debian: apt-get install qemu-system-common): running blockmirror only');
  }
  if (!hasBinary('fio')) throw new Error('fio is not installed (apt-get install fio)');
  await mkdir(dir, { recursive: true });
  const results: RoundResult[] = [];
  const baselines: Record<string, FioResult> = {};
  const tables: string[] = [];
  const ratioRows: string[][] = [];
  for (const size of sizes) {
    console.error(`making a ${formatBytes(size)} source image (random data, a quarter holes) in ${dir}`);
    await makeSampleImage(join(dir, 'src.img'), { size, holeFraction: 0.25 });
    for (const profile of writers.filter((w) => w.kind !== 'none')) {
      // The command line's writer goes through the blockmirror daemon's NBD server code: its baseline.
      const servers = [...new Set(daemons.map((b): DaemonBinary => (b === 'mirror-command' ? 'blockmirror' : b)))];
      for (const b of servers) {
        const key = `${b} ${formatBytes(size)} ${writerName(profile)}`;
        baselines[key] = await baseline(b, size, profile.kind === 'rate' ? profile.iops : 0);
        console.error(`baseline ${key}: ${baselines[key]!.iops.toFixed(0)} IOPS, p99 ${baselines[key]!.p99us.toFixed(0)} µs`);
      }
    }
    for (let r = 0; r < runs; r++) {
      for (const profile of writers) {
        const order = r % 2 === 0 ? daemons : [...daemons].reverse();
        for (const b of order) {
          const res = await round(b, size, profile);
          results.push(res);
          console.error(
            `${formatBytes(size)} ${res.writer} round ${r + 1} ${b}: ready ${res.readySeconds.toFixed(2)} s, copied ${res.copiedRatio.toFixed(3)} x size, ` +
              `complete ${res.completeSeconds.toFixed(2)} s, ${res.iops.toFixed(0)} IOPS, p99 ${res.p99us.toFixed(0)} µs, ${res.cpuSeconds.toFixed(2)} CPU-s`,
          );
        }
      }
    }
    const rows: string[][] = [];
    for (const profile of writers) {
      const name = writerName(profile);
      const medians = new Map<Contender, { ready: number; copied: number; iops: number; p99: number; cpu: number }>();
      for (const b of daemons) {
        const mine = results.filter((x) => x.daemon === b && x.size === size && x.writer === name);
        const med = (f: (x: RoundResult) => number): number => median(mine.map(f));
        const all = (f: (x: RoundResult) => number, digits: number): string => mine.map((x) => f(x).toFixed(digits)).join(' / ');
        medians.set(b, { ready: med((x) => x.readySeconds), copied: med((x) => x.copiedRatio), iops: med((x) => x.iops), p99: med((x) => x.p99us), cpu: med((x) => x.cpuSeconds) });
        const base = baselines[`${b === 'mirror-command' ? 'blockmirror' : b} ${formatBytes(size)} ${name}`];
        rows.push([
          name,
          b,
          `${med((x) => x.readySeconds).toFixed(2)} (${all((x) => x.readySeconds, 2)})`,
          `${med((x) => x.copiedRatio).toFixed(3)}`,
          `${med((x) => x.completeSeconds).toFixed(2)}`,
          profile.kind === 'none' ? '-' : `${med((x) => x.iops).toFixed(0)} (${all((x) => x.iops, 0)})`,
          profile.kind === 'none' ? '-' : `${med((x) => x.p99us).toFixed(0)}`,
          `${med((x) => x.cpuSeconds).toFixed(2)}`,
          base ? `${base.iops.toFixed(0)} / ${base.p99us.toFixed(0)} µs` : '-',
        ]);
      }
      const qemu = medians.get('qemu-storage-daemon');
      for (const contender of ['blockmirror', 'mirror-command'] as const) {
        const mine = medians.get(contender);
        if (!mine || !qemu) continue;
        const ratio = (a: number, b: number): string => (Number.isNaN(a) || Number.isNaN(b) ? '-' : (a / b).toFixed(2));
        ratioRows.push([contender === 'blockmirror' ? 'daemon' : 'mirror command', formatBytes(size), name, ratio(mine.ready, qemu.ready), ratio(mine.copied, qemu.copied), ratio(mine.iops, qemu.iops), ratio(mine.p99, qemu.p99), ratio(mine.cpu, qemu.cpu)]);
      }
    }
    tables.push(
      `${formatBytes(size)} image:\n\n` +
        markdownTable(
          ['writer', 'daemon', 'time to ready, s: median (runs)', 'bytes copied / image size', 'complete, s', 'writer IOPS during the job', 'writer p99, µs', 'CPU-s', 'writer alone: IOPS / p99'],
          rows,
        ),
    );
  }
  console.log(tables.join('\n\n'));
  if (ratioRows.length) {
    console.log('\nblockmirror / qemu-storage-daemon, medians (ready and p99: lower is better; IOPS: higher is better):\n');
    console.log(markdownTable(['blockmirror', 'image', 'writer', 'time to ready', 'bytes copied', 'writer IOPS', 'writer p99', 'CPU-s'], ratioRows));
  }
  const machine = machineInfo(dir);
  console.log(`\n${runs} rounds, fio ${fioSeconds} s per round${afterReady ? ', started once the job was ready' : ''}; ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.filesystem}, Node ${machine.node}`);
  if (values.json) await writeFile(values.json, JSON.stringify({ kind: 'qmp', date: new Date().toISOString(), machine, sizes, writers: writers.map(writerName), runs, fioSeconds, writerAfterReady: afterReady, baselines, results, ratios: ratioRows }, null, 2));
  await rm(dir, { recursive: true, force: true });
}

await main();

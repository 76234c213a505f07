/**
 * The same QMP session against qemu-storage-daemon and against `blockmirror daemon`: the same
 * start-up options, the same image, the same fio writer (4 KiB random writes, iodepth 8, through
 * each daemon's own NBD export), alternating daemons within each round.
 *
 *   npm run bench:qmp -- [--size 4G] [--runs 3] [--fio-seconds 20] [--daemons qemu-storage-daemon,blockmirror]
 *                        [--dir DIR] [--json FILE]
 *
 * One round, per daemon: start it (--blockdev src, --nbd-server, --export writable, --chardev +
 * --monitor), blockdev-add a fresh sparse target, start fio, one second later blockdev-mirror
 * sync=full; time to BLOCK_JOB_READY; when fio has finished, block-job-complete and
 * BLOCK_JOB_COMPLETED (offset: bytes the job copied); quit. Also one fio run per daemon with no
 * job, for the writer's baseline. Prints a Markdown table for docs/perf.md.
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
import { machineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '4G' },
    runs: { type: 'string', default: '3' },
    'fio-seconds': { type: 'string', default: '20' },
    dir: { type: 'string' },
    json: { type: 'string' },
    daemons: { type: 'string', default: 'qemu-storage-daemon,blockmirror' },
  },
});
const size = parseSize(values.size!, '--size');
const runs = Number(values.runs);
const fioSeconds = Number(values['fio-seconds']);
const dir = resolve(values.dir ?? join(process.cwd(), 'bench-qmp-tmp'));

function hasBinary(bin: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => existsSync(join(d, bin)));
}

interface FioResult {
  iops: number;
  p99us: number;
}

/** fio through an NBD export: 4 KiB random writes, iodepth 8, for `seconds`. */
function fio(socket: string, seconds: number): Promise<FioResult> {
  return new Promise((done, fail) => {
    const child = spawn('fio', [
      '--name=writer', '--ioengine=nbd', `--uri=nbd+unix:///src?socket=${socket}`, '--rw=randwrite', '--bs=4k', '--iodepth=8',
      `--size=${size}`, '--time_based', `--runtime=${seconds}`, '--output-format=json',
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

const DAEMONS = values.daemons!.split(',') as DaemonBinary[];

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
  daemon: DaemonBinary;
  readySeconds: number;
  copiedRatio: number;
  completeSeconds: number;
  iops: number;
  p99us: number;
}

async function round(binary: DaemonBinary): Promise<RoundResult> {
  const dst = join(dir, 'dst.img');
  await rm(dst, { force: true });
  await writeFile(dst, '');
  await truncate(dst, size);
  const s = await start(binary);
  try {
    await s.qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    const writer = fio(s.nbd, fioSeconds);
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = performance.now();
    await s.qmp.execute('blockdev-mirror', { 'job-id': 'job0', device: 'src', target: 'dst', sync: 'full' });
    await s.qmp.waitEvent('BLOCK_JOB_READY', () => true, 600_000);
    const readySeconds = (performance.now() - t0) / 1000;
    const w = await writer;
    const t1 = performance.now();
    await s.qmp.execute('block-job-complete', { device: 'job0' });
    const done = await s.qmp.waitEvent('BLOCK_JOB_COMPLETED', () => true, 600_000);
    const completeSeconds = (performance.now() - t1) / 1000;
    if (done.data!.error) throw new Error(`${binary}: job failed: ${String(done.data!.error)}`);
    return { daemon: binary, readySeconds, copiedRatio: (done.data!.offset as number) / size, completeSeconds, iops: w.iops, p99us: w.p99us };
  } finally {
    await stop(s);
  }
}

async function baseline(binary: DaemonBinary): Promise<FioResult> {
  const s = await start(binary);
  try {
    return await fio(s.nbd, Math.min(fioSeconds, 10));
  } finally {
    await stop(s);
  }
}

async function main(): Promise<void> {
  const daemons = DAEMONS.filter((b) => b === 'blockmirror' || hasBinary(b));
  if (!daemons.includes('qemu-storage-daemon')) {
    console.error('qemu-storage-daemon is not installed (Debian: apt-get install qemu-system-common): running blockmirror only');
  }
  if (!hasBinary('fio')) throw new Error('fio is not installed (apt-get install fio)');
  await mkdir(dir, { recursive: true });
  console.error(`making a ${formatBytes(size)} source image (random data, a quarter holes) in ${dir}`);
  await makeSampleImage(join(dir, 'src.img'), { size, holeFraction: 0.25 });
  const results: RoundResult[] = [];
  const baselines: Record<string, FioResult> = {};
  for (const b of daemons) {
    baselines[b] = await baseline(b);
    console.error(`baseline ${b}: ${baselines[b]!.iops.toFixed(0)} IOPS, p99 ${baselines[b]!.p99us.toFixed(0)} µs`);
  }
  for (let r = 0; r < runs; r++) {
    const order = r % 2 === 0 ? daemons : [...daemons].reverse();
    for (const b of order) {
      const res = await round(b);
      results.push(res);
      console.error(`round ${r + 1} ${b}: ready ${res.readySeconds.toFixed(2)} s, copied ${res.copiedRatio.toFixed(3)} x size, complete ${res.completeSeconds.toFixed(2)} s, ${res.iops.toFixed(0)} IOPS, p99 ${res.p99us.toFixed(0)} µs`);
    }
  }
  const rows = daemons.map((b) => {
    const mine = results.filter((x) => x.daemon === b);
    const med = (f: (x: RoundResult) => number): number => median(mine.map(f));
    const all = (f: (x: RoundResult) => number, digits: number): string => mine.map((x) => f(x).toFixed(digits)).join(' / ');
    return [
      b,
      `${med((x) => x.readySeconds).toFixed(2)} (${all((x) => x.readySeconds, 2)})`,
      `${med((x) => x.copiedRatio).toFixed(3)} (${all((x) => x.copiedRatio, 3)})`,
      `${med((x) => x.completeSeconds).toFixed(2)}`,
      `${med((x) => x.iops).toFixed(0)} (${all((x) => x.iops, 0)})`,
      `${med((x) => x.p99us).toFixed(0)} (${all((x) => x.p99us, 0)})`,
      `${baselines[b]!.iops.toFixed(0)} / ${baselines[b]!.p99us.toFixed(0)} µs`,
    ];
  });
  const table = markdownTable(
    ['daemon', 'time to ready, s: median (runs)', 'bytes copied / image size', 'complete, s', 'writer IOPS during the job', 'writer p99, µs', 'writer alone: IOPS / p99'],
    rows,
  );
  console.log(table);
  const machine = machineInfo(dir);
  console.log(`\n${formatBytes(size)} image, ${runs} rounds, fio ${fioSeconds} s per round; ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.filesystem}, Node ${machine.node}`);
  if (values.json) await writeFile(values.json, JSON.stringify({ kind: 'qmp', date: new Date().toISOString(), machine, size, runs, fioSeconds, baselines, results }, null, 2));
  await rm(dir, { recursive: true, force: true });
}

await main();

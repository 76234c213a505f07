/**
 * Continuous replication benchmark: fio (random 4 KiB writes, queue depth 8) through the
 * primary's export, with the image replicated to a `blockmirror replica` process over loopback
 * TCP and checkpoints every `--checkpoint-interval` ms, against fio through a plain export of
 * the same image (no replication), alternating within each round. Reports the writer's IOPS and
 * p99 both ways, checkpoint latency (request to done) p50/p99, the secondary's checkpoint buffer
 * bytes per second of writing, and, in an outage run (the secondary killed for `--outage`
 * seconds while fio writes; `--outage 0`: none), the bytes sent again against the bytes written
 * meanwhile.
 *
 *   npm run bench:replication -- [--size 1G] [--seconds 10] [--rounds 3] [--checkpoint-interval 200]
 *                                [--outage 3] [--replica-granularity SIZE] [--replica-durability power|process]
 *                                [--dir DIR] [--json FILE]
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { QmpClient } from '../src/control/qmp/QmpClient.js';
import { FileDevice } from '../src/io/FileDevice.js';
import { Replication } from '../src/replication/Replication.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { writeBack, writeThrough, type WriterStats } from './lib/fio.js';
import { machineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';
import { startReplicaProcess, type ReplicaProcess } from '../test/helpers/replica.js';


/** The replica's --granularity and --durability (undefined: its defaults). */
let replicaGranularity: string | undefined;
let replicaDurability: string | undefined;

function startReplica(disk: string, control: string, state: string, port = '0'): Promise<ReplicaProcess> {
  const extra = [
    ...(replicaGranularity === undefined ? [] : ['--granularity', replicaGranularity]),
    ...(replicaDurability === undefined ? [] : ['--durability', replicaDurability]),
  ];
  return startReplicaProcess(disk, control, state, { port, extra });
}

interface Setup {
  readonly dir: string;
  readonly src: string;
  readonly size: number;
  readonly seconds: number;
  readonly interval: number;
}

/** A fresh secondary disk (zeros) and replica process. */
async function freshReplica(s: Setup): Promise<{ child: ChildProcess; uri: string; control: string; disk: string; state: string }> {
  const disk = join(s.dir, 'repl-secondary.img');
  const state = join(s.dir, 'repl-state');
  const control = join(s.dir, 'repl-control.sock');
  await rm(state, { recursive: true, force: true });
  await writeFile(disk, '');
  await truncate(disk, s.size);
  return { ...(await startReplica(disk, control, state)), control, disk, state };
}

/** fio through the primary's export while replicating; the secondary's buffer sampled meanwhile. */
async function replicatedRun(s: Setup): Promise<{ writer: WriterStats; checkpointMs: number[]; bufferBytesPerSecond: number; syncSeconds: number }> {
  const replica = await freshReplica(s);
  await writeBack(s.src);
  const started = performance.now();
  const replication = await Replication.start({ disks: [{ source: s.src, secondary: replica.uri, control: replica.control }], checkpointInterval: s.interval });
  const checkpointMs: number[] = [];
  replication.on('checkpoint', (c) => checkpointMs.push(c.ms));
  try {
    while (replication.state !== 'replicating') await new Promise((r) => setTimeout(r, 20));
    const syncSeconds = (performance.now() - started) / 1000;
    checkpointMs.length = 0;
    // The buffer empties at each checkpoint: its largest size in each interval is what that interval saved.
    const monitor = await QmpClient.connect(replica.control);
    // The interval under way when sampling starts holds the initial sync's saves: it is left out.
    let lastId: number | undefined;
    let firstInterval = true;
    let peak = 0;
    let buffered = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const q = await monitor.execute<{ checkpoint: { id: number | null }; 'buffer-bytes': number }>('query-replica');
        const id = q.checkpoint.id ?? 0;
        if (id !== lastId) {
          if (lastId !== undefined && !firstInterval) buffered += peak;
          if (lastId !== undefined) firstInterval = false;
          peak = 0;
          lastId = id;
        }
        peak = Math.max(peak, q['buffer-bytes']);
        await new Promise((r) => setTimeout(r, 20));
      }
      buffered += peak;
    })();
    const writer = await writeThrough(replication.jobs[0]!.device.asBlockDevice(), join(s.dir, 'repl.sock'), s.size, s.seconds, 0);
    sampling = false;
    await sampler;
    await monitor.close();
    return { writer, checkpointMs: [...checkpointMs], bufferBytesPerSecond: buffered / s.seconds, syncSeconds };
  } finally {
    await replication.stop();
    replica.child.kill('SIGKILL');
  }
}

async function plainRun(s: Setup): Promise<WriterStats> {
  await writeBack(s.src);
  const device = await FileDevice.open({ kind: 'file', path: s.src, writable: true });
  try {
    return await writeThrough(device, join(s.dir, 'repl.sock'), s.size, s.seconds, 0);
  } finally {
    await device.close();
  }
}

/** fio writes; the secondary is killed for `outage` seconds and started again; what is sent again. */
async function outageRun(s: Setup, outage: number): Promise<{ resyncBytes: number; writtenDuringOutage: number; outageSeconds: number }> {
  const replica = await freshReplica(s);
  const replication = await Replication.start({ disks: [{ source: s.src, secondary: replica.uri, control: replica.control }], checkpointInterval: s.interval });
  let restarted: ChildProcess | undefined;
  try {
    while (replication.state !== 'replicating') await new Promise((r) => setTimeout(r, 20));
    const job = replication.jobs[0]!;
    const view = job.device.asBlockDevice();
    let writes = 0;
    const counted = { ...view, write: (d: Uint8Array, o: number) => (writes++, view.write(d, o)) };
    const socket = join(s.dir, 'repl.sock');
    const writer = writeThrough(counted, socket, s.size, outage + 4, 0);
    await new Promise((r) => setTimeout(r, 1000));
    const port = new URL(replica.uri).port;
    replica.child.kill('SIGKILL');
    await new Promise((r) => replica.child.once('close', r));
    const writesBefore = writes;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, outage * 1000));
    restarted = (await startReplica(replica.disk, replica.control, replica.state, port)).child;
    const resynced = await new Promise<{ bytes: number }>((r) => replication.once('resynced', r));
    const outageSeconds = (performance.now() - t0) / 1000;
    const writtenDuringOutage = (writes - writesBefore) * 4096;
    await writer;
    return { resyncBytes: resynced.bytes, writtenDuringOutage, outageSeconds };
  } finally {
    await replication.stop();
    restarted?.kill('SIGKILL');
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '1G' },
      seconds: { type: 'string', default: '10' },
      rounds: { type: 'string', default: '3' },
      'checkpoint-interval': { type: 'string', default: '200' },
      outage: { type: 'string', default: '3' },
      'replica-granularity': { type: 'string' },
      'replica-durability': { type: 'string' },
      dir: { type: 'string', default: join(process.cwd(), '.bm-bench') },
      json: { type: 'string' },
    },
  });
  const size = parseSize(values.size!, '--size');
  replicaGranularity = values['replica-granularity'];
  replicaDurability = values['replica-durability'];
  const dir = resolve(values.dir!);
  await mkdir(dir, { recursive: true });
  const src = join(dir, 'repl-primary.img');
  if (!existsSync(src) || (await stat(src)).size !== size) {
    console.error(`making a ${formatBytes(size)} random source ${src}`);
    await makeSampleImage(src, { size, holeFraction: 0 });
  }
  const s: Setup = { dir, src, size, seconds: Number(values.seconds), interval: Number(values['checkpoint-interval']) };
  const plain: WriterStats[] = [];
  const replicated: Array<Awaited<ReturnType<typeof replicatedRun>>> = [];
  for (let round = 0; round < Number(values.rounds); round++) {
    const order = round % 2 === 0 ? ['plain', 'replicated'] : ['replicated', 'plain'];
    for (const which of order) {
      if (which === 'plain') {
        const w = await plainRun(s);
        plain.push(w);
        console.error(`  round ${round + 1} no replication: ${w.iops.toFixed(0)} IOPS, p99 ${(w.p99 / 1000).toFixed(2)} ms`);
      } else {
        const r = await replicatedRun(s);
        replicated.push(r);
        const sorted = [...r.checkpointMs].sort((a, b) => a - b);
        console.error(
          `  round ${round + 1} replicated: ${r.writer.iops.toFixed(0)} IOPS, p99 ${(r.writer.p99 / 1000).toFixed(2)} ms; ${sorted.length} checkpoints, ` +
            `p50 ${median(sorted).toFixed(1)} ms; buffer ${formatBytes(r.bufferBytesPerSecond)}/s; initial sync ${r.syncSeconds.toFixed(1)} s`,
        );
      }
    }
  }
  const outage = Number(values.outage) > 0 ? await outageRun(s, Number(values.outage)) : { resyncBytes: Number.NaN, writtenDuringOutage: Number.NaN, outageSeconds: 0 };
  console.error(`  outage ${outage.outageSeconds.toFixed(1)} s: ${formatBytes(outage.writtenDuringOutage)} written meanwhile, ${formatBytes(outage.resyncBytes)} sent again`);
  const allCheckpoints = replicated.flatMap((r) => r.checkpointMs).sort((a, b) => a - b);
  const pct = (q: number): number => allCheckpoints[Math.min(allCheckpoints.length - 1, Math.floor(q * allCheckpoints.length))] ?? Number.NaN;
  const plainIops = median(plain.map((w) => w.iops));
  const replIops = median(replicated.map((r) => r.writer.iops));
  const plainP99 = median(plain.map((w) => w.p99));
  const replP99 = median(replicated.map((r) => r.writer.p99));
  console.log(
    markdownTable(
      ['measure', 'without replication', 'with replication', 'ratio'],
      [
        ['writer IOPS (median)', plainIops.toFixed(0), replIops.toFixed(0), (replIops / plainIops).toFixed(2)],
        ['writer p99, ms (median)', (plainP99 / 1000).toFixed(2), (replP99 / 1000).toFixed(2), (replP99 / plainP99).toFixed(2)],
        ['checkpoint, request to done, p50 / p99 ms', '-', `${pct(0.5).toFixed(1)} / ${pct(0.99).toFixed(1)}`, '-'],
        ['checkpoint buffer, bytes per second of writing', '-', `${formatBytes(median(replicated.map((r) => r.bufferBytesPerSecond)))}/s`, '-'],
        [`outage of ${outage.outageSeconds.toFixed(1)} s: bytes sent again / written meanwhile`, '-', `${formatBytes(outage.resyncBytes)} / ${formatBytes(outage.writtenDuringOutage)}`, (outage.resyncBytes / outage.writtenDuringOutage).toFixed(2)],
      ],
    ),
  );
  if (values.json) {
    await writeFile(values.json, `${JSON.stringify({ kind: 'replication', date: new Date().toISOString(), size, setup: { ...s, dir: undefined }, machine: machineInfo(dir), plain, replicated, outage }, null, 2)}\n`);
  }
}

await main();

/**
 * What crash-safe tracking costs the application: fio (random 4 KiB writes, queue depth 8)
 * through the export of a live mirror, with a state directory (activity log and checkpoints) and
 * without, alternating within each round, from the job's start for `--seconds` (the bulk copy and
 * then the sync). Reports medians of the writer's IOPS and p99, the CPU-seconds of this process
 * (the job, its workers and the export) during the writer's run, and the with/without ratios.
 *
 *   npm run bench:state -- [--size 1G] [--seconds 10] [--rounds 3] [--rate max|IOPS]
 *                          [--checkpoint-interval MS] [--dir DIR] [--json FILE]
 */
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startMirror } from '../src/index.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { writeBack, writeThrough, type WriterStats } from './lib/fio.js';
import { machineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';

type Variant = 'without state' | 'with state';
const VARIANTS: readonly Variant[] = ['without state', 'with state'];

interface StateRun {
  readonly variant: Variant;
  readonly round: number;
  readonly writer: WriterStats;
  readonly cpuSeconds: number;
  readonly readySeconds: number | null;
}

async function run(variant: Variant, o: { src: string; dst: string; dir: string; size: number; seconds: number; iops: number; checkpointInterval: number }): Promise<Omit<StateRun, 'round'>> {
  const state = join(o.dir, 'state-bench');
  await rm(o.dst, { force: true });
  await rm(state, { recursive: true, force: true });
  await writeBack(o.src);
  const started = performance.now();
  const job = await startMirror({
    source: o.src,
    target: o.dst,
    ...(variant === 'with state' ? { state, checkpointInterval: o.checkpointInterval } : {}),
  });
  let readySeconds: number | null = null;
  job.once('ready', () => (readySeconds = (performance.now() - started) / 1000));
  const cpu0 = process.cpuUsage();
  const writer = await writeThrough(job.device.asBlockDevice(), join(o.dir, 'state-bench.sock'), o.size, o.seconds, o.iops);
  const cpu = process.cpuUsage(cpu0);
  await job.cancel({ force: true });
  await job.close();
  return { variant, writer, cpuSeconds: (cpu.user + cpu.system) / 1e6, readySeconds };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '1G' },
      seconds: { type: 'string', default: '10' },
      rounds: { type: 'string', default: '3' },
      rate: { type: 'string', default: 'max' },
      'checkpoint-interval': { type: 'string', default: '2000' },
      dir: { type: 'string', default: join(process.cwd(), '.bm-bench') },
      json: { type: 'string' },
    },
  });
  const size = parseSize(values.size!, '--size');
  const dir = resolve(values.dir!);
  await mkdir(dir, { recursive: true });
  const src = join(dir, 'state-src.img');
  if (!existsSync(src) || (await stat(src)).size !== size) {
    console.error(`making a ${formatBytes(size)} random source ${src}`);
    await makeSampleImage(src, { size, holeFraction: 0 });
  }
  const options = {
    src,
    dst: join(dir, 'state-dst.img'),
    dir,
    size,
    seconds: Number(values.seconds),
    iops: values.rate === 'max' ? 0 : Number(values.rate),
    checkpointInterval: Number(values['checkpoint-interval']),
  };
  const runs: StateRun[] = [];
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const variant of round % 2 === 0 ? VARIANTS : [...VARIANTS].reverse()) {
      const r = { ...(await run(variant, options)), round };
      runs.push(r);
      console.error(
        `  round ${round + 1} ${variant}: ${r.writer.iops.toFixed(0)} IOPS, p99 ${(r.writer.p99 / 1000).toFixed(2)} ms, ` +
          `${r.cpuSeconds.toFixed(2)} CPU-s, ready ${r.readySeconds === null ? 'not within the run' : `at ${r.readySeconds.toFixed(1)} s`}`,
      );
    }
  }
  const summary = VARIANTS.map((variant) => {
    const rs = runs.filter((r) => r.variant === variant);
    return {
      variant,
      iops: median(rs.map((r) => r.writer.iops)),
      p99: median(rs.map((r) => r.writer.p99)),
      cpu: median(rs.map((r) => r.cpuSeconds)),
      ready: median(rs.map((r) => r.readySeconds ?? Number.NaN)),
    };
  });
  const [without, withState] = summary as [(typeof summary)[0], (typeof summary)[0]];
  console.log(
    markdownTable(
      ['variant', 'writer IOPS', 'writer p99 ms', 'CPU-s', 'ready s', 'IOPS / without', 'p99 / without'],
      summary.map((s) => [
        s.variant,
        s.iops.toFixed(0),
        (s.p99 / 1000).toFixed(2),
        s.cpu.toFixed(2),
        Number.isNaN(s.ready) ? '-' : s.ready.toFixed(1),
        (s.iops / without.iops).toFixed(2),
        (s.p99 / without.p99).toFixed(2),
      ]),
    ),
  );
  console.log(`with state / without: ${(withState.iops / without.iops).toFixed(2)} × the IOPS (medians of ${values.rounds} alternating rounds)`);
  if (values.json) await writeFile(values.json, `${JSON.stringify({ kind: 'state', date: new Date().toISOString(), size, options, machine: machineInfo(dir), runs, summary }, null, 2)}\n`);
}

await main();

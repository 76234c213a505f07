import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Command } from 'commander';
import { AbortError, ErrorCode, JobError } from '../errors.js';
import type { MirrorJob } from '../job/MirrorJob.js';
import { startMirror } from '../job/startMirror.js';
import { builtModulePath } from '../util/builtModule.js';
import { allocatedBytes, hashFile, makeSampleImage } from '../util/imageTools.js';
import { formatBytes, formatDuration } from '../util/size.js';
import type { DemoWriterData, DemoWriterReport } from './demoWriter.js';
import { withInterrupt } from './interrupt.js';
import { sizeOption } from './options.js';
import { emitEvent } from './output.js';
import { showMirrorProgress } from './mirrorProgress.js';
import { ProgressBar } from './ProgressBar.js';

/** Defaults of the demo: a sample image this large, written at this rate while it is mirrored. */
const DEMO_IMAGE_SIZE = 1 << 30;
const DEMO_WRITE_RATE = 64 << 20;
const DEMO_MAX_BLOCK = 256 << 10;
/** How long the demo keeps the job in sync, writer running, before it completes. */
const DEMO_HOLD_MS = 2000;

interface DemoOptions {
  size: number;
  writeRate: number;
  dir?: string;
  keep: boolean;
  json: boolean;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('mirror a sample image while a built-in writer keeps writing to it, then pivot and verify')
    .option('--size <size>', 'size of the sample image', sizeOption('--size'), DEMO_IMAGE_SIZE)
    .option('--write-rate <bytes/s>', 'how fast the built-in writer writes', sizeOption('--write-rate'), DEMO_WRITE_RATE)
    .option('--dir <dir>', 'where to put the images (default: a new temporary directory)')
    .option('--keep', 'keep the images afterwards', false)
    .option('--json', 'NDJSON events on stdout instead of a progress bar', false)
    .action(async (opts: DemoOptions) => {
      await withInterrupt((signal) => runDemo(opts, signal));
    });
}

function startWriter(job: MirrorJob, rate: number): { stop: () => Promise<DemoWriterReport> } {
  const data: DemoWriterData = { tracker: job.tracker(), rate, maxBlock: DEMO_MAX_BLOCK };
  const worker = new Worker(builtModulePath('cli/demoWriter.js'), { workerData: data });
  const report = new Promise<DemoWriterReport>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  return {
    stop: async () => {
      worker.postMessage('stop');
      const r = await report;
      await worker.terminate();
      return r;
    },
  };
}

async function runDemo(opts: DemoOptions, signal: AbortSignal): Promise<void> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'blockmirror-demo-')));
  const source = join(dir, 'source.img');
  const target = join(dir, 'target.img');
  const say = (line: string): boolean => opts.json || process.stderr.write(`demo: ${line}\n`);
  try {
    await rm(target, { force: true });
    say(`writing a ${formatBytes(opts.size)} sample image (random data, half holes) to ${source}`);
    await makeSampleImage(source, { size: opts.size, holeFraction: 0.5 });
    const started = performance.now();
    const job = await startMirror({ source, target });
    const writer = startWriter(job, opts.writeRate);
    if (opts.json) emitEvent('start', { source, target, size: opts.size, writeRate: opts.writeRate });
    say(`mirroring to ${target} while a writer thread writes ${formatBytes(opts.writeRate)}/s of random blocks`);
    const progress = showMirrorProgress(job, { json: opts.json, bar: ProgressBar.forOptions({ json: opts.json, progress: true }) });
    let readySeconds = 0;
    try {
      await new Promise<void>((resolve, reject) => {
        job.once('ready', () => resolve());
        signal.addEventListener('abort', () => reject(new AbortError('interrupted before the mirror was in sync')), { once: true });
        void job.result.then((o) => o.status === 'failed' && reject(o.error));
      });
      readySeconds = (performance.now() - started) / 1000;
      if (opts.json) emitEvent('ready', { seconds: readySeconds });
      // Stay in sync for a moment with the writer still going: new writes are copied as they land.
      await new Promise((r) => setTimeout(r, DEMO_HOLD_MS));
    } catch (err) {
      progress.stop();
      await writer.stop();
      await job.cancel({ force: true }).catch(() => undefined);
      await job.close();
      throw err;
    }
    const written = await writer.stop();
    const outcome = await job.complete();
    progress.stop();
    await job.close();
    if (outcome.status !== 'completed') throw new JobError(ErrorCode.JOB_FAILED, `demo: the job ended ${outcome.status}`);
    const [a, b] = await Promise.all([hashFile(source), hashFile(target)]);
    if (a !== b) throw new JobError(ErrorCode.JOB_FAILED, `demo: the target differs from the source (sha256 ${b} vs ${a})`);
    const summary = {
      size: opts.size,
      readySeconds,
      totalSeconds: (performance.now() - started) / 1000,
      bytesCopied: outcome.offset,
      writerWrites: written.writes,
      writerBytes: written.bytes,
      sha256: a,
      targetAllocated: await allocatedBytes(target),
    };
    if (opts.json) emitEvent('done', summary);
    else {
      process.stdout.write(
        `mirrored ${formatBytes(opts.size)} while a writer made ${written.writes} writes (${formatBytes(written.bytes)}): ` +
          `ready after ${formatDuration(readySeconds)}, pivoted after ${formatDuration(summary.totalSeconds)}, ` +
          `${formatBytes(summary.bytesCopied)} copied; target verified identical (sha256 ${a.slice(0, 12)}…)\n`,
      );
    }
    if (opts.keep) say(`images kept in ${dir}`);
  } finally {
    if (!opts.keep) await rm(opts.dir ? source : dir, { recursive: true, force: true });
    if (!opts.keep && opts.dir) await rm(target, { force: true });
  }
}

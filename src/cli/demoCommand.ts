import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { JobError, ErrorCode } from '../errors.js';
import { copyImage, type CopyProgress } from '../job/copyImage.js';
import { allocatedBytes, hashFile, makeSampleImage } from '../util/imageTools.js';
import { formatBytes } from '../util/size.js';
import { copySummary } from './copyCommand.js';
import { withInterrupt } from './interrupt.js';
import { sizeOption } from './options.js';
import { ProgressBar } from './ProgressBar.js';

/** Size of the demo's sample image unless --size says otherwise. */
const DEMO_IMAGE_SIZE = 1 << 30;

interface DemoOptions {
  size: number;
  dir?: string;
  keep: boolean;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('make a sample image (random data with holes), copy it, verify the copy, print a summary')
    .option('--size <size>', 'size of the sample image', sizeOption('--size'), DEMO_IMAGE_SIZE)
    .option('--dir <dir>', 'where to put the images (default: a new temporary directory)')
    .option('--keep', 'keep the images afterwards', false)
    .action(async (opts: DemoOptions) => {
      await runDemo(opts);
    });
}

async function runDemo(opts: DemoOptions): Promise<void> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'blockmirror-demo-')));
  const source = join(dir, 'source.img');
  const target = join(dir, 'target.img');
  try {
    await rm(target, { force: true });
    process.stderr.write(`demo: writing a ${formatBytes(opts.size)} sample image (random data, half holes) to ${source}\n`);
    await makeSampleImage(source, { size: opts.size, holeFraction: 0.5 });
    const bar = ProgressBar.wanted() ? new ProgressBar() : undefined;
    const onProgress = (p: CopyProgress): void => bar?.update({ done: p.bytesDone, total: p.bytesTotal, rate: p.rate, etaSeconds: p.etaSeconds });
    const result = await withInterrupt((signal) => copyImage(source, target, { onProgress, signal })).finally(() => bar?.stop());
    const [a, b] = await Promise.all([hashFile(source), hashFile(target)]);
    if (a !== b) throw new JobError(ErrorCode.JOB_FAILED, `demo: the target differs from the source (sha256 ${b} vs ${a})`);
    const [srcAlloc, dstAlloc] = await Promise.all([allocatedBytes(source), allocatedBytes(target)]);
    process.stdout.write(
      `${copySummary(result)}; verified identical (sha256 ${a.slice(0, 12)}…); ` +
        `allocated ${formatBytes(dstAlloc)} on the target vs ${formatBytes(srcAlloc)} on the source\n`,
    );
    if (opts.keep) process.stdout.write(`demo: images kept in ${dir}\n`);
  } finally {
    if (!opts.keep) await rm(opts.dir ? source : dir, { recursive: true, force: true });
    if (!opts.keep && opts.dir) await rm(target, { force: true });
  }
}

import type { Command } from 'commander';
import { saveBitmap } from '../bitmap/BitmapFile.js';
import { DEFAULT_GRANULARITY } from '../bitmap/DirtyBitmap.js';
import { verifyImages, type VerifyProgress, type VerifyResult } from '../job/verifyImages.js';
import { DEFAULT_CHUNK_SIZE, defaultWorkers } from '../sched/tuning.js';
import { formatBytes, formatDuration } from '../util/size.js';
import { ExitCode } from './exitCodes.js';
import { withInterrupt } from './interrupt.js';
import { integerOption, sizeOption } from './options.js';
import { emitEvent, finiteOrNull } from './output.js';
import { ProgressBar } from './ProgressBar.js';

/** Differing extents the summary lists on stdout; the rest are counted. */
const LISTED_EXTENTS = 20;

/** Options of `blockmirror verify`, as commander parses them. */
interface VerifyCommandOptions {
  bitmap?: string;
  granularity: number;
  chunkSize: number;
  workers: number;
  json: boolean;
  progress: boolean;
}

export function registerVerifyCommand(program: Command): void {
  program
    .command('verify')
    .description(`compare two images chunk by chunk and report every differing extent; exit 0 if identical, ${ExitCode.DIFFER} if they differ`)
    .argument('<source>', 'raw image file, block device, or NBD URI')
    .argument('<target>', 'file, block device, or NBD URI, at least as large as the source')
    .option('--bitmap <file>', 'write the differing extents as a persistent dirty bitmap file (for a mirror to repair)')
    .option('--granularity <size>', 'resolution of the differing extents, bytes per bitmap bit: a power of two from 512 to 64M', sizeOption('--granularity'), DEFAULT_GRANULARITY)
    .option('-c, --chunk-size <size>', 'bytes read on each side per operation (power of two, 4K to 64M)', sizeOption('--chunk-size'), DEFAULT_CHUNK_SIZE)
    .option('-w, --workers <n>', 'worker threads', integerOption('--workers', 1, 64), defaultWorkers())
    .option('--json', 'NDJSON events on stdout instead of a progress bar', false)
    .option('--no-progress', 'no progress bar')
    .action(async (source: string, target: string, opts: VerifyCommandOptions) => {
      await runVerify(source, target, opts);
    });
}

async function runVerify(source: string, target: string, opts: VerifyCommandOptions): Promise<void> {
  const bar = ProgressBar.forOptions(opts);
  if (opts.json) {
    emitEvent('start', { source, target, chunkSize: opts.chunkSize, granularity: opts.granularity, workers: opts.workers, bitmap: opts.bitmap ?? null });
  }
  const onProgress = (p: VerifyProgress): void => {
    if (opts.json) {
      emitEvent('progress', { bytes: p.bytesDone, total: p.bytesTotal, differingBytes: p.differingBytes, rate: Math.round(p.rate), eta: finiteOrNull(p.etaSeconds) });
    }
    bar?.update({ done: p.bytesDone, total: p.bytesTotal, rate: p.rate, etaSeconds: p.etaSeconds });
  };
  let result: VerifyResult;
  try {
    result = await withInterrupt((signal) =>
      verifyImages({
        source,
        target,
        chunkSize: opts.chunkSize,
        workers: opts.workers,
        granularity: opts.granularity,
        onProgress: opts.json || bar ? onProgress : undefined,
        signal,
      }),
    );
  } finally {
    bar?.stop();
  }
  if (opts.bitmap !== undefined) await saveBitmap(opts.bitmap, result.bitmap);
  const identical = result.extents.length === 0;
  if (opts.json) {
    for (const e of result.extents) emitEvent('extent', { offset: e.offset, length: e.length });
    emitEvent('done', {
      bytes: result.bytes,
      seconds: result.seconds,
      identical,
      differingBytes: result.differingBytes,
      extents: result.extents.length,
      bitmap: opts.bitmap ?? null,
    });
  } else {
    process.stdout.write(verifySummary(result, opts.bitmap));
  }
  if (!identical) process.exitCode = ExitCode.DIFFER;
}

/** What a finished verify prints: one line when identical; else the extents too (at most {@link LISTED_EXTENTS}). */
export function verifySummary(r: VerifyResult, bitmapPath?: string): string {
  const compared = `${formatBytes(r.bytes)} compared in ${formatDuration(r.seconds)}`;
  const lines: string[] = [];
  if (r.extents.length === 0) {
    lines.push(`identical: ${compared}`);
  } else {
    const n = r.extents.length;
    lines.push(`differ: ${n} extent${n === 1 ? '' : 's'}, ${formatBytes(r.differingBytes)} (${compared}); offsets and lengths in bytes:`);
    for (const e of r.extents.slice(0, LISTED_EXTENTS)) lines.push(`  ${e.offset} +${e.length} (${formatBytes(e.length)})`);
    if (n > LISTED_EXTENTS) lines.push(`  and ${n - LISTED_EXTENTS} more`);
  }
  if (bitmapPath !== undefined) lines.push(`bitmap written to ${bitmapPath}: ${r.bitmap.count()} of ${r.bitmap.bitCount} bits of ${formatBytes(r.bitmap.granularity)} set`);
  return `${lines.join('\n')}\n`;
}

import type { Command } from 'commander';
import { copyImage, type CopyProgress, type CopyResult, type IoModeOption } from '../job/copyImage.js';
import { describePlan } from '../sched/IoPlanChooser.js';
import { DEFAULT_COPY_WORKERS, DEFAULT_FLUSH_EVERY, DEFAULT_QUEUE_DEPTH } from '../sched/tuning.js';
import { formatBytes, formatDuration } from '../util/size.js';
import { withInterrupt } from './interrupt.js';
import { addCopyTuningOptions, choiceOption, integerOption, sizeOption, type CopyTuningOptions } from './options.js';
import { emitEvent, finiteOrNull } from './output.js';
import { ProgressBar } from './ProgressBar.js';

/** Options of `blockmirror copy`, as commander parses them. */
interface CopyCommandOptions extends CopyTuningOptions {
  queueDepth: number;
  flushEvery: number;
  targetIsZero: boolean;
  zeroDetect: boolean;
  readMode: IoModeOption;
  writeMode: IoModeOption;
}

const IO_MODES: readonly IoModeOption[] = ['auto', 'buffered', 'direct'];

export function registerCopyCommand(program: Command): void {
  addCopyTuningOptions(
    program
      .command('copy')
      .description('copy an image to a target, ending with the data on disk')
      .argument('<source>', 'raw image file, block device, or NBD URI (nbd://host[:port]/export, nbd+unix:///export?socket=PATH)')
      .argument('<target>', 'file (created, sized to the source, if missing), block device, or NBD URI'),
    { workers: DEFAULT_COPY_WORKERS },
  )
    .option('-q, --queue-depth <n>', 'copy operations in flight', integerOption('--queue-depth', 1, 1020), DEFAULT_QUEUE_DEPTH)
    .option('--flush-every <size>', 'bytes written between paced flushes (0: only the final flush)', sizeOption('--flush-every'), DEFAULT_FLUSH_EVERY)
    .option('--target-is-zero', 'an existing target already reads as zeros: skip zero chunks unseen', false)
    .option('--no-zero-detect', 'write zero chunks as data')
    .addOption(choiceOption('--read-mode <mode>', 'read a file source through the page cache (buffered), with O_DIRECT (direct), or measure and choose (auto)', IO_MODES, 'auto'))
    .addOption(choiceOption('--write-mode <mode>', 'write a file target through the page cache, flushed as it goes (buffered), with O_DIRECT (direct), or auto', IO_MODES, 'auto'))
    .action(async (source: string, target: string, opts: CopyCommandOptions, command: Command) => {
      // A chunk size left at its default lets O_DIRECT phases move larger requests (copyImage's `chunkSize`).
      await runCopy(source, target, opts, command.getOptionValueSource('chunkSize') !== 'default');
    });
}

async function runCopy(source: string, target: string, opts: CopyCommandOptions, chunkAsked: boolean): Promise<void> {
  const bar = ProgressBar.forOptions(opts);
  if (opts.json) {
    emitEvent('start', { source, target, chunkSize: opts.chunkSize, queueDepth: opts.queueDepth, workers: opts.workers });
  }
  const onProgress = (p: CopyProgress): void => {
    if (opts.json) emitEvent('progress', { bytes: p.bytesDone, total: p.bytesTotal, rate: Math.round(p.rate), eta: finiteOrNull(p.etaSeconds) });
    bar?.update({ done: p.bytesDone, total: p.bytesTotal, rate: p.rate, etaSeconds: p.etaSeconds });
  };
  let result: CopyResult;
  try {
    result = await withInterrupt((signal) =>
      copyImage(source, target, {
        ...(chunkAsked ? { chunkSize: opts.chunkSize } : {}),
        queueDepth: opts.queueDepth,
        workers: opts.workers,
        direct: opts.direct,
        readMode: opts.readMode,
        writeMode: opts.writeMode,
        speed: opts.speed,
        flushEvery: opts.flushEvery,
        targetIsZero: opts.targetIsZero,
        detectZeroes: opts.zeroDetect,
        onProgress: opts.json || bar ? onProgress : undefined,
        signal,
      }),
    );
  } finally {
    bar?.stop();
  }
  if (opts.json) {
    emitEvent('done', {
      bytes: result.bytes,
      seconds: result.seconds,
      bytesWritten: result.bytesWritten,
      bytesZero: result.bytesZero,
      targetCreated: result.targetCreated,
      workers: result.tuning.workers,
      note: result.note ?? null,
      io: { read: result.io.plan.read, write: result.io.plan.write, basis: result.io.basis, reason: result.io.reason, switches: result.io.switches, trials: result.io.trials },
    });
  } else {
    process.stdout.write(`${copySummary(result)}\n`);
  }
}

/** The one-line summary a finished copy prints. */
export function copySummary(r: CopyResult): string {
  const rate = r.seconds > 0 ? r.bytes / r.seconds : 0;
  return (
    `copied ${formatBytes(r.bytes)} in ${formatDuration(r.seconds)} (${formatBytes(rate)}/s): ` +
    `${formatBytes(r.bytesWritten)} written, ${formatBytes(r.bytesZero)} zero, data on disk (${describePlan(r.io.plan)}, ${r.io.basis})`
  );
}

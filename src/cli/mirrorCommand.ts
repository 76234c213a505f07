import type { Command } from 'commander';
import { describePlan } from '../sched/IoPlanChooser.js';
import { ErrorCode, InvalidArgumentError } from '../errors.js';
import { readBitmapHeader } from '../bitmap/BitmapFile.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import type { NbdServer } from '../io/nbd/NbdServer.js';
import { parseNbdUri } from '../io/nbd/NbdUri.js';
import { ERROR_POLICIES, type ErrorPolicy } from '../job/errorPolicy.js';
import { JobStatus } from '../job/JobStatus.js';
import type { JobErrorEvent, JobOutcome, MirrorJob } from '../job/MirrorJob.js';
import type { FirstPassSummary } from '../job/MirrorFirstPass.js';
import { startMirror } from '../job/startMirror.js';
import type { JobStateRecord } from '../state/JobStateFile.js';
import { DEFAULT_CHECKPOINT_INTERVAL_MS } from '../state/Checkpointer.js';
import type { CopyMode } from '../job/TrackedDevice.js';
import { DEFAULT_BUFFER_SIZE, DEFAULT_MIRROR_WORKERS } from '../sched/tuning.js';
import { formatBytes, formatDuration } from '../util/size.js';
import { ExitCode, type ExitCodeValue } from './exitCodes.js';
import { showMirrorProgress } from './mirrorProgress.js';
import { addCopyTuningOptions, choiceOption, integerOption, shareOption, sizeOption, type CopyTuningOptions } from './options.js';
import { DEFAULT_MIN_COPY_SHARE } from '../sched/ChunkTuner.js';
import { emitEvent, errorCode, reportError } from './output.js';
import type { ConvergenceEvent } from '../job/MirrorController.js';
import { ProgressBar } from './ProgressBar.js';

/** Options of `blockmirror mirror`, as commander parses them. */
interface MirrorCommandOptions extends CopyTuningOptions {
  export?: string;
  completeOnReady: boolean;
  sync: 'full' | 'none' | 'bitmap';
  bitmap?: string;
  copyMode: CopyMode;
  granularity?: number;
  bufferSize: number;
  onSourceError: ErrorPolicy;
  onTargetError: ErrorPolicy;
  minCopyShare?: number;
  state?: string;
  resume?: string;
  checkpointInterval?: number;
}

/** The signals the command acts on. */
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGUSR1', 'SIGUSR2'] as const;
type MirrorSignal = (typeof SIGNALS)[number];

export function registerMirrorCommand(program: Command): void {
  addCopyTuningOptions(
    program
      .command('mirror')
      .description(
        'mirror a live image to a target: copy it, keep the target in sync while it is written (through --export), ' +
          'switch over on SIGUSR1 or --complete-on-ready, cancel to a consistent copy on SIGINT',
      )
      .argument('[source]', 'raw image file, block device, or NBD URI (opened read-write); with --resume, the job\'s own')
      .argument('[target]', 'file (created, sized to the source, if missing), block device, or NBD URI; with --resume, the job\'s own'),
    { workers: DEFAULT_MIRROR_WORKERS },
  )
    .option('--state <dir>', 'keep the job\'s bitmap, activity log and phase in DIR, so that after a crash `blockmirror status DIR` says which image is current and --resume DIR copies only what is left')
    .option('--resume <dir>', 'resume the job of a state directory: copy what may differ, then carry on (nothing may have written the source meanwhile)')
    .option('--checkpoint-interval <ms>', 'with --state: milliseconds between saves of the bitmap while it changes', integerOption('--checkpoint-interval', 10, 3_600_000), DEFAULT_CHECKPOINT_INTERVAL_MS)
    .option(
      '--export <uri>',
      'serve the source over NBD while it is mirrored, every write going through the job: nbd+unix:///NAME?socket=PATH, ' +
        'or nbd://127.0.0.1:PORT/NAME (no host: 127.0.0.1; port 0: any free port)',
    )
    .option('--complete-on-ready', 'complete (switch over to the target) as soon as it is in sync, then exit', false)
    .addOption(
      choiceOption(
        '--sync <mode>',
        'full: copy everything; none: only what is written from now on; bitmap: what --bitmap marks, and what is written from now on',
        ['full', 'none', 'bitmap'],
        'full',
      ),
    )
    .option('--bitmap <file>', 'with --sync bitmap: a persistent dirty bitmap to start from (from blockmirror verify --bitmap, say); its granularity is the job\'s')
    .addOption(
      choiceOption(
        '--copy-mode <mode>',
        'background: writes mark extents the copier catches up on; write-blocking: a write reaches both sides before it is acknowledged',
        ['background', 'write-blocking'],
        'background',
      ),
    )
    .option('--granularity <size>', 'bytes per dirty bit (power of two, 512 to 64M; default 4K, coarser for huge images)', sizeOption('--granularity'))
    .option('--buffer-size <size>', 'bytes in flight at most (copy operations in flight: buffer / chunk size)', sizeOption('--buffer-size'), DEFAULT_BUFFER_SIZE)
    .option('--min-copy-share <share>', 'share of its best rate the copy keeps while the application is over its latency target (0 to 1)', shareOption('--min-copy-share'), DEFAULT_MIN_COPY_SHARE)
    .addOption(choiceOption('--on-source-error <policy>', 'on a source read error: fail (report), retry (ignore), pause until SIGUSR2 (stop), stop on ENOSPC only (enospc)', ERROR_POLICIES, 'report'))
    .addOption(choiceOption('--on-target-error <policy>', 'on a target write or flush error, as --on-source-error', ERROR_POLICIES, 'report'))
    .action(async (source: string | undefined, target: string | undefined, opts: MirrorCommandOptions, command: Command) => {
      // A chunk size left at its default lets the first pass's O_DIRECT phases move larger requests (startMirror's `chunkSize`).
      process.exitCode = await runMirror(source, target, opts, command.getOptionValueSource('chunkSize') !== 'default');
    });
}

/**
 * Where the command's events and messages go: NDJSON events on stdout with --json (held back
 * until `start` is out, so that events keep their order), else lines on stderr (above the bar).
 */
class MirrorReport {
  readonly json: boolean;
  readonly bar: ProgressBar | undefined;
  #held: Array<() => void> | undefined = [];

  constructor(opts: MirrorCommandOptions) {
    this.json = opts.json;
    this.bar = ProgressBar.forOptions(opts);
  }

  event(name: string, fields: Record<string, unknown>): void {
    if (!this.json) return;
    const time = new Date().toISOString();
    const emit = (): void => emitEvent(name, { time, ...fields });
    if (this.#held) this.#held.push(emit);
    else emit();
  }

  /** A line for people, on stderr (without --json). */
  say(line: string): void {
    if (this.json) return;
    const text = `blockmirror mirror: ${line}`;
    if (this.bar) this.bar.message(text);
    else process.stderr.write(`${text}\n`);
  }

  /** Emits `start`, then the events held back so far. */
  start(fields: Record<string, unknown>): void {
    const held = this.#held ?? [];
    this.#held = undefined;
    this.event('start', fields);
    for (const emit of held) emit();
  }
}

/**
 * One run of the command: the job, its export, and what each signal does to them.
 *
 * - SIGUSR1: complete (pivot to the target) once in sync, at once if it is.
 * - SIGINT/SIGTERM: once in sync, cancel to a consistent copy; before, or while finishing, stop at
 *   once (the target is not a consistent copy). After a pivot with an export, stop serving and exit.
 *   One more than it takes to stop exits at once with 130.
 * - SIGUSR2: resume a job that an error policy (`stop`, `enospc`) paused.
 */
class MirrorRun {
  readonly #report: MirrorReport;
  readonly #started = performance.now();
  #job: MirrorJob | undefined;
  /** Signals that came before the job started; handled once it has. */
  #early: MirrorSignal[] = [];
  #completeOnReady: boolean;
  #finishing: 'complete' | 'cancel' | 'abort' | undefined;
  #outcome: JobOutcome | undefined;
  /** Set while the export is kept up after a pivot: ends that. */
  #stopServing: (() => void) | undefined;
  #exiting = false;

  constructor(report: MirrorReport, completeOnReady: boolean) {
    this.#report = report;
    this.#completeOnReady = completeOnReady;
  }

  get seconds(): number {
    return Math.round((performance.now() - this.#started) / 100) / 10;
  }

  /** Takes over the job once started: its events, and the signals that came meanwhile. */
  attach(job: MirrorJob): void {
    this.#job = job;
    job.on('status-change', ({ status }) => {
      // Deferred: the job is still in the middle of its transition.
      if (status === JobStatus.READY && this.#completeOnReady) setImmediate(() => this.#complete());
    });
    job.on('ready', ({ len, offset }) => {
      this.#report.event('ready', { seconds: this.seconds, len, offset });
      if (!this.#completeOnReady) {
        this.#report.say('in sync: SIGUSR1 completes (switches over to the target), SIGINT cancels leaving a consistent copy');
      }
    });
    job.on('error', (e: JobErrorEvent) => {
      this.#report.event('error', { code: ErrorCode.IO, ...e });
      const where = e.offset === undefined ? '' : ` at ${e.offset}+${e.length ?? 0}`;
      const then = e.action === 'stop' ? 'the job is paused: fix the cause, then send SIGUSR2 to resume' : e.action === 'ignore' ? 'will retry' : 'the job fails';
      this.#report.say(`${e.operation} error${where}: ${e.errno}: ${e.message}; ${then}`);
    });
    job.on('convergence', (e: ConvergenceEvent) => {
      this.#report.event('convergence', { seconds: this.seconds, ...e });
      if (e.action === 'write-blocking') {
        this.#report.say('the writer outpaces the copy: switched to write-blocking, so every write now reaches both sides and the backlog can only shrink');
      } else if (e.action === 'reported') this.#report.say(`not converging: ${e.reason}`);
    });
    job.on('completed', ({ len, offset }) => this.#report.event('completed', { seconds: this.seconds, len, offset, pivoted: true }));
    job.on('cancelled', ({ len, offset, consistent }) => this.#report.event('cancelled', { seconds: this.seconds, len, offset, consistent }));
    void job.result.then((outcome) => (this.#outcome = outcome));
  }

  /** Handles the signals that came before the job started. */
  replayEarlySignals(): void {
    for (const signal of this.#early.splice(0)) this.onSignal(signal);
  }

  onSignal(signal: MirrorSignal): void {
    if (!this.#job) {
      // Opening the devices may hang (an NBD server that does not answer): a second interrupt quits.
      const interrupt = (s: MirrorSignal): boolean => s === 'SIGINT' || s === 'SIGTERM';
      if (interrupt(signal) && this.#early.some(interrupt)) process.exit(ExitCode.INTERRUPTED);
      this.#early.push(signal);
      return;
    }
    if (signal === 'SIGUSR1') this.#requestComplete();
    else if (signal === 'SIGUSR2') this.#resume();
    else this.#interrupt(signal);
  }

  /** Resolves once the export should stop: at once unless the job pivoted and the export is to stay up. */
  untilDoneServing(keepServing: boolean): Promise<void> {
    if (!keepServing || this.#exiting) return Promise.resolve();
    this.#report.say('completed: the export now serves the target; SIGINT or SIGTERM stops it');
    return new Promise((resolve) => (this.#stopServing = resolve));
  }

  #requestComplete(): void {
    const job = this.#job!;
    if (this.#outcome || this.#finishing) return;
    if (job.status === JobStatus.READY) {
      this.#complete();
      return;
    }
    this.#completeOnReady = true;
    this.#report.say(`SIGUSR1: not in sync yet (${job.status}); completing once it is`);
  }

  #complete(): void {
    const job = this.#job!;
    if (this.#outcome || this.#finishing || job.status !== JobStatus.READY) return;
    this.#finishing = 'complete';
    this.#report.say('completing: copying what is left, then switching over to the target');
    job.complete().catch((err: unknown) => this.#report.say(`cannot complete: ${String(err)}`));
  }

  #resume(): void {
    const job = this.#job!;
    if (!job.paused || this.#outcome) return;
    this.#report.say('SIGUSR2: resuming');
    job.resume();
  }

  #interrupt(signal: MirrorSignal): void {
    const job = this.#job!;
    if (this.#outcome) {
      if (this.#stopServing) {
        this.#report.say(`${signal}: stopping the export`);
        this.#stopServing();
        this.#stopServing = undefined;
      } else if (this.#exiting) process.exit(ExitCode.INTERRUPTED);
      this.#exiting = true;
      return;
    }
    if (this.#finishing === 'abort') process.exit(ExitCode.INTERRUPTED);
    if (this.#finishing === undefined && (job.status === JobStatus.READY || job.status === JobStatus.STANDBY)) {
      this.#finishing = 'cancel';
      this.#report.say(`${signal}: cancelling: copying what is left, the target will be a consistent copy (${signal} again to stop at once)`);
      job.cancel().catch(() => undefined);
      return;
    }
    this.#finishing = 'abort';
    this.#report.say(`${signal}: stopping at once: the target will not be a consistent copy (${signal} again to quit)`);
    job.cancel({ force: true }).catch(() => undefined);
  }
}

/** The exit status a job's outcome ends the command with. */
function exitCodeOf(outcome: JobOutcome): ExitCodeValue {
  if (outcome.status === 'completed') return ExitCode.OK;
  if (outcome.status === 'cancelled') return outcome.consistent ? ExitCode.OK : ExitCode.INTERRUPTED;
  return ExitCode.FAILED;
}

function usage(message: string): InvalidArgumentError {
  return new InvalidArgumentError(ErrorCode.INVALID_OPTION, message);
}

/** What a resumed job starts from, said before it starts. */
async function resumePoint(dir: string, report: MirrorReport): Promise<{ source: string; target: string; completing: boolean }> {
  const { recoverJobState } = await import('../state/recoverJobState.js');
  const recovered = await recoverJobState(dir);
  const { state } = recovered;
  const name = (l: JobStateRecord['source']): string => (typeof l === 'string' ? l : JSON.stringify(l));
  if (!recovered.running && state.phase !== 'pivoted') {
    report.say(
      `resuming job ${state.id} of ${dir} (${state.phase}): ${formatBytes(recovered.leftBytes)} may differ ` +
        `(${formatBytes(recovered.bitmapBytes)} in the bitmap, ${recovered.logExtents} extents in the activity log)`,
    );
    if (state.phase === 'completing') report.say('it was completing when it stopped: it completes once in sync');
  }
  return { source: name(state.source), target: name(state.target), completing: state.phase === 'completing' };
}

async function runMirror(givenSource: string | undefined, givenTarget: string | undefined, opts: MirrorCommandOptions, chunkAsked: boolean): Promise<ExitCodeValue> {
  // A malformed export URI is a usage error, found before anything is opened or created.
  if (opts.export !== undefined) parseNbdUri(opts.export, { forListening: true });
  if (opts.resume !== undefined) {
    if (opts.state !== undefined) throw usage('--resume DIR keeps using DIR: --state goes with a new job only');
    if (opts.sync !== 'full' || opts.bitmap !== undefined) throw usage('--resume copies what the state directory says: --sync and --bitmap go with a new job only');
    if (opts.granularity !== undefined) throw usage('--resume keeps the job\'s granularity: --granularity goes with a new job only');
  } else if (givenSource === undefined || givenTarget === undefined) {
    throw usage('mirror needs a SOURCE and a TARGET (or --resume DIR)');
  }
  if ((opts.sync === 'bitmap') !== (opts.bitmap !== undefined)) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, '--sync bitmap and --bitmap FILE go together');
  }
  // The job tracks at the bitmap's granularity unless told otherwise (a bitmap of another one is refused).
  const granularity = opts.granularity ?? (opts.bitmap !== undefined ? (await readBitmapHeader(opts.bitmap)).granularity : undefined);
  const report = new MirrorReport(opts);
  const resumed = opts.resume !== undefined ? await resumePoint(opts.resume, report) : undefined;
  const source = resumed?.source ?? givenSource!;
  const target = resumed?.target ?? givenTarget!;
  const run = new MirrorRun(report, opts.completeOnReady || resumed?.completing === true);
  const onSignal = (signal: MirrorSignal): void => run.onSignal(signal);
  for (const s of SIGNALS) process.on(s, onSignal);
  try {
    const tuning = {
      sync: opts.sync,
      ...(opts.bitmap !== undefined ? { bitmap: opts.bitmap } : {}),
      copyMode: opts.copyMode,
      granularity,
      bufferSize: opts.bufferSize,
      ...(chunkAsked ? { chunkSize: opts.chunkSize } : {}),
      workers: opts.workers,
      speed: opts.speed,
      onSourceError: opts.onSourceError,
      onTargetError: opts.onTargetError,
      minCopyShare: opts.minCopyShare,
      ...(opts.state !== undefined || opts.resume !== undefined ? { checkpointInterval: opts.checkpointInterval } : {}),
    };
    const job =
      opts.resume !== undefined
        ? await (await import('../job/resumeMirror.js')).resumeMirror({ state: opts.resume, source: givenSource, target: givenTarget, direct: opts.direct, ...withoutSyncOptions(tuning) })
        : await startMirror({ source, target, direct: opts.direct, state: opts.state, ...tuning });
    run.attach(job);
    const view = job.device.asBlockDevice();
    let exported: { server: NbdServer; uri: string } | undefined;
    try {
      // The NBD server, a resume's recovery: loaded only by the runs that use them (start-up time).
      if (opts.export !== undefined) exported = await (await import('../io/nbd/NbdServer.js')).serveNbd(view, opts.export, { description: view.description });
    } catch (err) {
      await job.cancel({ force: true });
      await job.close();
      throw err;
    }
    report.start({
      source,
      target,
      size: job.size,
      export: exported?.uri ?? null,
      ...tuning,
      chunkSize: opts.chunkSize,
      completeOnReady: opts.completeOnReady,
      state: opts.state ?? opts.resume ?? null,
      resumed: opts.resume !== undefined,
    });
    // The URI line is the contract scripts wait for (as with `blockmirror serve`): the export is up.
    if (exported && !opts.json) process.stdout.write(`serving ${source} (${formatBytes(job.size)}, mirrored to ${target}) at ${exported.uri}\n`);
    report.say(`mirroring ${source} to ${target} (${formatBytes(job.size)})`);
    const progress = showMirrorProgress(job, { json: opts.json, bar: report.bar });
    run.replayEarlySignals();

    const outcome = await job.result;
    progress.stop();
    await run.untilDoneServing(exported !== undefined && outcome.status === 'completed' && !opts.completeOnReady);
    let code = exitCodeOf(outcome);
    const closeError = await closeExport(exported?.server, view);
    if (closeError) {
      reportError(closeError, false);
      code = ExitCode.FAILED;
    }
    await job.close();
    finish(report, run, outcome, code, source, target, job.firstPass);
    return code;
  } finally {
    for (const s of SIGNALS) process.off(s, onSignal);
  }
}

/** A resumed job's options: its sync and granularity come from the state directory. */
function withoutSyncOptions<T extends { sync: unknown; granularity: unknown }>(tuning: T): Omit<T, 'sync' | 'granularity'> {
  const { sync: _sync, granularity: _granularity, ...rest } = tuning;
  return rest;
}

/** Stops the export, answering the requests in progress, then flushes what they wrote. */
async function closeExport(server: NbdServer | undefined, view: BlockDevice): Promise<Error | undefined> {
  if (!server) return undefined;
  await server.close();
  try {
    await view.flush();
    return undefined;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}

/** Says how the job ended: the `done` event, or a line for people. */
function finish(
  report: MirrorReport,
  run: MirrorRun,
  outcome: JobOutcome,
  code: ExitCodeValue,
  source: string,
  target: string,
  firstPass: FirstPassSummary | undefined,
): void {
  const failure = outcome.status === 'failed' ? outcome.error : undefined;
  report.event('done', {
    status: outcome.status,
    pivoted: outcome.status === 'completed',
    consistent: outcome.status === 'completed' || (outcome.status === 'cancelled' && outcome.consistent),
    exitCode: code,
    seconds: run.seconds,
    len: outcome.len,
    offset: outcome.offset,
    firstPass: firstPass ? { ...firstPass, endedBy: firstPass.endedBy ?? null } : null,
    ...(failure ? { code: errorCode(failure) ?? null, message: failure.message } : {}),
    ...(code === ExitCode.INTERRUPTED ? { code: ErrorCode.ABORTED, message: `interrupted before the mirror was in sync: ${target} is not a consistent copy` } : {}),
  });
  const pass = firstPass && `first pass: ${describePlan(firstPass.io.plan)}, ${firstPass.io.basis}${firstPass.endedBy ? `, handed over when ${firstPass.endedBy}` : ''}`;
  const copied = `${formatBytes(outcome.offset)} copied in ${formatDuration(run.seconds)}${pass ? `; ${pass}` : ''}`;
  if (failure) reportError(failure, false);
  else if (outcome.status === 'cancelled' && !outcome.consistent) {
    process.stderr.write(`blockmirror: interrupted before the mirror was in sync: ${target} is not a consistent copy of ${source} (${copied})\n`);
  } else if (!report.json) {
    process.stdout.write(
      outcome.status === 'completed'
        ? `completed (pivoted): ${target} is a full copy of ${source} (${copied})\n`
        : `cancelled: ${target} is a consistent copy of ${source} as of the cancel (${copied})\n`,
    );
  }
}

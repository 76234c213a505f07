import { performance } from 'node:perf_hooks';
import { IoError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { CopyScheduler, type BatchOutcome } from '../sched/CopyScheduler.js';
import { RangesExtentSource, type ExtentSource, type PhaseExtentSource, type RangeHolds, type StretchKind } from '../sched/ExtentSource.js';
import { IoPlanChooser, type CopyPhase, type IoPlan, type PhaseOutcome } from '../sched/IoPlanChooser.js';
import { RateLimiter } from '../sched/RateLimiter.js';
import { DEFAULT_PROGRESS_INTERVAL_MS, PassProgress, type PassProgressReport } from '../sched/PassProgress.js';
import { batchExtentsFor, STREAM_BYTES, type CopyTuning } from '../sched/tuning.js';
import { WritebackPacer } from '../sched/WritebackPacer.js';
import type { CopyRunner } from '../workers/createCopyRunner.js';

/** A progress report of a bulk copy. */
export interface CopyProgress extends PassProgressReport {
  /** Bytes written to the target (zero chunks skipped are not). */
  readonly bytesWritten: number;
  /** Bytes found all-zero. */
  readonly bytesZero: number;
}

/** What a {@link BulkCopy} copies with. */
export interface BulkCopySettings {
  readonly sourceSpec: DeviceSpec;
  readonly targetSpec: DeviceSpec;
  /** The coordinator's own devices: sizes, and the target's flushes. */
  readonly source: BlockDevice;
  readonly target: BlockDevice;
  readonly tuning: CopyTuning;
  readonly runner: CopyRunner;
  readonly chooser: IoPlanChooser;
  readonly detectZeroes: boolean;
  readonly targetIsZero: boolean;
  /**
   * Tasks are streams, each walking its own region in order, so the kernel's readahead has each
   * next read in memory before it is asked for (docs/perf.md, "Bulk copy"). Not under a rate
   * limit, whose slices are smaller than a stream, nor over NBD.
   */
  readonly streams: boolean;
  /** No chunk size was asked for: O_DIRECT phases move {@link DIRECT_REQUESTS}. */
  readonly largeRequests?: boolean;
  /** The source is mostly holes and takes O_DIRECT: phases scan it for holes (see {@link HOLE_SCAN}). */
  readonly holeScan?: boolean;
  /**
   * Resolves once the workers are up (an EagerCopyPool's `up`). Until then the coordinator copies
   * the warm-up itself, and the first trial waits for it: a trial run while threads boot would
   * measure the boot (see docs/perf.md, "the mirror's first pass").
   */
  readonly workersUp?: Promise<void>;
  /** Where a phase's extents come from (default: its ranges as they are; a mirror claims dirty bits). */
  readonly phaseExtents?: (ranges: ReadonlyArray<readonly [number, number]>) => PhaseExtentSource;
  readonly started: number;
}

/**
 * How a mostly-hole source is scanned: with O_DIRECT reads, whatever the plan, since a hole read
 * that way costs no disk I/O and fills no cache, only the kernel's zero fill and the zero check,
 * both bound by memory. Two streams of 4 MiB reads keep each core's buffer in its cache: 21–24 GB/s
 * of holes here, against 14 GB/s with 16 streams of 1 MiB, and half the CPU; 4 or 8 streams took
 * 1.4–2.4 × as long (docs/perf.md, "Second wave"). A scan stops at its first data, which is
 * copied from there as the plan says (the page cache may serve it) until it reaches zeros again.
 * A stream of holes is a message to the worker and back: each that finds only holes doubles the
 * next one's length, up to `maxStreamBytes`, and one that finds data starts again from
 * STREAM_BYTES. A file of 64 GiB of holes took 2.1 s that way, against 2.6–2.7 s in streams of 32 MiB;
 * 256 MiB streams took 2.2 s.
 */
export const HOLE_SCAN = { chunkBytes: 4 << 20, streams: 2, maxStreamBytes: 1 << 30 } as const;

/**
 * How the O_DIRECT phases of a copy run when no chunk size is asked for: each O_DIRECT request
 * costs a system call, a libuv thread hop and a worker message whatever its size, and the disk
 * takes large ones at least as fast (the block layer splits them at its own limit), so these
 * phases move 8 MiB per request in a quarter as many streams. Zeros are still found at the chunk
 * size (`CopyTask.zeroGranule`). 1 GiB here: 1.7–2.0 GB/s and 0.3 CPU-s with 8 MiB, against
 * 1.2–1.4 GB/s and 0.5–0.9 CPU-s with 1 MiB (docs/perf.md, "Second wave, second pass").
 */
export const DIRECT_REQUESTS = { chunkBytes: 8 << 20, streamsPerDepth: 1 / 4 } as const;

/** The requests of a phase: bytes each moves, and streams (or operations) in flight. */
interface RequestShape {
  readonly chunk: number;
  readonly depth: number;
}

/** Options that reach a running copy. */
export interface BulkCopyRunOptions {
  readonly onProgress?: (progress: CopyProgress) => void;
  readonly progressInterval?: number;
  readonly signal?: AbortSignal;
}

/**
 * One run of a bulk copy over the whole image: phases chosen by an {@link IoPlanChooser}, each a
 * {@link CopyScheduler} over its range with the plan's device specs, write-back paced and
 * charged to the phase that caused it, progress reported throughout.
 */
export class BulkCopy {
  bytesDone = 0;
  bytesWritten = 0;
  bytesZero = 0;
  pacedFlushes = 0;
  readonly size: number;
  readonly #s: BulkCopySettings;
  readonly #progress: PassProgress;
  readonly #limiter: RateLimiter;
  #failure: IoError | undefined;
  #scheduler: CopyScheduler | undefined;
  #stopped = false;
  /** The running phase's stop flag for its streams (see `CopyTask.cancel`). */
  #cancel: Int32Array | undefined;
  /** Flushes of trials that had lost before they ended, still running. */
  readonly #pendingFlushes: Array<Promise<void>> = [];

  constructor(settings: BulkCopySettings) {
    this.#s = settings;
    this.size = settings.source.size;
    this.#progress = new PassProgress(this.size, settings.started);
    this.#limiter = new RateLimiter(settings.tuning.speed);
  }

  async run(options: BulkCopyRunOptions): Promise<void> {
    const { chooser, target, runner } = this.#s;
    const onAbort = (): void => this.#stop();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort(); // aborted while the copy was being set up
    const report = (): void => options.onProgress?.(this.progress());
    const ticker = options.onProgress ? setInterval(report, options.progressInterval ?? DEFAULT_PROGRESS_INTERVAL_MS) : undefined;
    try {
      let phase = chooser.next();
      for (; phase && !this.#stopped; phase = chooser.next()) {
        if (phase.trial) await this.#s.workersUp;
        if (this.#stopped) break; // stopped while it waited
        const t0 = performance.now();
        const outcome = await this.#runPhase(phase, chooser.deadline(phase));
        if (this.#stopped) break;
        chooser.record(phase, (performance.now() - t0) / 1000, outcome);
      }
      await Promise.all(this.#pendingFlushes);
      if (this.#failure) throw this.#failure;
      // Stopped with a phase left to run (an abort that came once every byte was copied is too late to stop anything).
      if (phase) throw this.#progress.interrupted('copied', this.bytesDone, '; the target is incomplete');
      await target.flush();
      report();
    } finally {
      clearInterval(ticker);
      options.signal?.removeEventListener('abort', onAbort);
      await runner.close();
    }
  }

  /** Bytes the running phase has in flight. */
  get inFlightBytes(): number {
    return this.#scheduler?.inFlightBytes ?? 0;
  }

  /** Operations (or streams) the running phase has in flight. */
  get inFlightOperations(): number {
    return this.#scheduler?.inFlightOperations ?? 0;
  }

  progress(): CopyProgress {
    return { ...this.#progress.sample(this.bytesDone), bytesWritten: this.bytesWritten, bytesZero: this.bytesZero };
  }

  /**
   * Copies the phase's ranges with its plan; a page-cache target is flushed at its end. A phase
   * still running `deadline` seconds in is cut short (its streams stop after the extent each is
   * on); returns what it did, with the ranges it left uncopied (a cut trial's, and where its
   * source cannot take them back, the rest of streams that stopped at zeros) for the chooser to
   * hand out again.
   */
  async #runPhase(phase: CopyPhase, deadline: number | undefined): Promise<PhaseOutcome> {
    const { tuning, target, runner, streams } = this.#s;
    const { data, holes } = this.#shapes(phase);
    const buffered = phase.plan.write === 'buffered';
    const pacer = new WritebackPacer(() => target.flush(), buffered ? tuning.flushEvery : 0);
    // Every stream of a phase runs at once: a trial phase shorter than queueDepth streams of
    // STREAM_BYTES gets shorter streams, so it measures the copy at its full depth.
    const bytes = phase.ranges.reduce((n, [start, end]) => n + end - start, 0);
    const streamExtents = ({ chunk, depth }: RequestShape, most = STREAM_BYTES): number =>
      Math.max(1, Math.floor(Math.min(most, Math.floor(bytes / depth / chunk) * chunk) / chunk));
    let holeStream = STREAM_BYTES;
    // Streams of data in flight once a scan has found data: as many as the scan had, doubling
    // with each stream that was all data. 16 at once ran past the ends of 128 MiB runs, and the
    // page-cache reads of those that did filled the cache with zeros (readahead included).
    let dataDepth = holes?.depth ?? data.depth;
    const initial = holes ?? data;
    const [done0, zero0] = [this.bytesDone, this.bytesZero];
    // Streams stop at this flag after the extent each is on: a trial past its deadline, a stop.
    const cancel = streams ? new Int32Array(new SharedArrayBuffer(4)) : undefined;
    this.#cancel = cancel;
    const uncopied: Array<[number, number]> = [];
    const ranges: PhaseExtentSource = this.#s.phaseExtents?.(phase.ranges) ?? new RangesExtentSource(phase.ranges);
    // Where the source takes back what a stopped stream left, a scan stops at its first data and
    // a stream of data at its first zeros, and each rest is shaped for what it begins with. (A
    // mirror's pass cannot take rests back: a scan there copies the data it finds, and the shape
    // follows what the last stream found.)
    const canGiveBack = ranges.giveBack !== undefined && ranges.takeOf !== undefined && ranges.has !== undefined;
    /** Shapes the next batch for a stretch of `kind`: data as the plan says, anything else scanned. */
    const shapeFor = (kind: StretchKind): void => {
      const scanning = kind === 'other';
      const shape = scanning ? holes! : data;
      const read = scanning ? 'direct' : phase.plan.read;
      Object.assign(scheduler.options, {
        chunkSize: shape.chunk,
        queueDepth: scanning ? shape.depth : dataDepth,
        batchExtents: streamExtents(shape, scanning ? holeStream : STREAM_BYTES),
        source: specFor(this.#s.sourceSpec, read),
        // Data read through the page cache stops at its first zeros (holes would fill the cache).
        stopAtZero: !scanning && (read === 'buffered' || canGiveBack),
        stopAtData: scanning && canGiveBack,
      });
    };
    const scheduler = new CopyScheduler({
      pool: runner,
      source: specFor(this.#s.sourceSpec, holes ? 'direct' : phase.plan.read),
      target: specFor(this.#s.targetSpec, phase.plan.write),
      chunkSize: initial.chunk,
      queueDepth: initial.depth,
      batchExtents: streams ? streamExtents(initial, holeStream) : batchExtentsFor(initial.depth, tuning.workers),
      streams,
      detectZeroes: this.#s.detectZeroes,
      ...(Math.max(initial.chunk, data.chunk) > tuning.chunkSize ? { zeroGranule: tuning.chunkSize } : {}),
      ...(cancel ? { cancel } : {}),
      ...(holes && canGiveBack ? { stopAtData: true, beforeTake: () => sideBySide.pick() } : {}),
      targetIsZero: this.#s.targetIsZero,
      limiter: this.#limiter,
      onBatch: (outcome) => {
        sideBySide.running.delete(outcome.extents);
        this.#account(outcome, uncopied, ranges);
        ranges.finished?.(outcome);
        if (holes) {
          const { stoppedAt, stoppedAtData, bytesZero } = outcome.result;
          const onlyHoles = bytesZero === outcome.bytes && stoppedAt === undefined;
          holeStream = onlyHoles ? Math.min(HOLE_SCAN.maxStreamBytes, holeStream * 2) : STREAM_BYTES;
          if (stoppedAtData) dataDepth = holes.depth;
          else if (bytesZero === 0 && stoppedAt === undefined) dataDepth = Math.min(data.depth, 2 * dataDepth);
          if (!canGiveBack) shapeFor(stoppedAt !== undefined || bytesZero * 2 >= outcome.bytes ? 'other' : 'data');
        }
        pacer.noteWritten(outcome.result.bytesWritten);
        if (this.#failure || pacer.error) this.#stop();
      },
    });
    // Scans and streams of data run side by side: the scans, bound by memory, go on over what is
    // not known yet while the data found, bound by the disk, is copied. Each kind keeps to its
    // own number of streams in flight.
    const sideBySide = {
      running: new Map<readonly number[], StretchKind>(),
      next: 'other' as StretchKind,
      inFlight(kind: StretchKind): number {
        let n = 0;
        for (const k of this.running.values()) if (k === kind) n++;
        return n;
      },
      /** Shapes the next take for the kind it takes; false while each kind there is work for has its streams in flight. */
      pick(): boolean {
        const scan = ranges.has!('other');
        const copy = ranges.has!('data');
        if (scan && this.inFlight('other') < holes!.depth) this.next = 'other';
        else if (copy && this.inFlight('data') < dataDepth) this.next = 'data';
        else return !scan && !copy; // nothing left to take: the take finds the source exhausted
        shapeFor(this.next);
        return true;
      },
      /** The phase's source as the scheduler takes from it: the kind picked, each take remembered until its batch ends. */
      source: {
        take: (out: number[], maxExtents: number, maxBytes: number): number => {
          const n = ranges.takeOf!(sideBySide.next, out, maxExtents, maxBytes);
          if (n > 0) sideBySide.running.set(out, sideBySide.next);
          return n;
        },
        get exhausted(): boolean {
          return ranges.exhausted;
        },
        get remaining(): number {
          return ranges.remaining;
        },
      } satisfies ExtentSource,
    };
    this.#scheduler = scheduler;
    const started = performance.now();
    let cut = false;
    const timer =
      cancel && deadline !== undefined
        ? setTimeout(() => {
            cut = true;
            Atomics.store(cancel, 0, 1);
            scheduler.stop();
          }, deadline * 1000)
        : undefined;
    try {
      await scheduler.run(holes && canGiveBack ? sideBySide.source : ranges);
      clearTimeout(timer);
      await pacer.settle();
      // Write-back deferred by the page cache is a trial's cost: paid here, not by the next
      // phase. A run segment leaves it to the pacer's flushes and the final one, as a copy
      // through the page cache is best run (the kernel writes back while the copy goes on).
      // A trial cut short has lost already; its writes are flushed with the copy's. So has one
      // whose flush is still running at the deadline: the copy goes on, and the flush is awaited
      // before the final one (whose success must not hide its failure).
      if (buffered && phase.trial && !this.#stopped && !cut) {
        const flush = target.flush();
        if (deadline === undefined || (await settlesWithin(flush, deadline * 1000 - (performance.now() - started)))) await flush;
        else {
          cut = true;
          flush.catch(() => undefined); // handled here: `run` awaits it, and throws what it throws
          this.#pendingFlushes.push(flush);
        }
      }
    } finally {
      clearTimeout(timer);
      await scheduler.drain(); // nothing of the phase may still be in flight once it is over
      this.pacedFlushes += pacer.flushes;
      this.#scheduler = undefined;
      this.#cancel = undefined;
    }
    if (cut) uncopied.push(...ranges.rest());
    const copied = this.bytesDone - done0;
    return { uncopied: merged(uncopied), cut, ...(holes ? { dataBytes: copied - (this.bytesZero - zero0) } : {}) };
  }

  /**
   * How a phase's requests are shaped: `data` for data, and on a hole-scanned source also
   * `holes`, the shape it starts in and returns to at each stream of holes.
   */
  #shapes(phase: CopyPhase): { data: RequestShape; holes?: RequestShape } {
    const { tuning, source, target, streams } = this.#s;
    const fit = (shape: RequestShape): RequestShape => ({ ...shape, chunk: Math.min(shape.chunk, target.maxRequest, source.maxRequest) });
    const direct = streams && (phase.plan.read === 'direct' || phase.plan.write === 'direct');
    const data =
      direct && this.#s.largeRequests === true
        ? { chunk: Math.max(tuning.chunkSize, DIRECT_REQUESTS.chunkBytes), depth: Math.max(1, Math.ceil(tuning.queueDepth * DIRECT_REQUESTS.streamsPerDepth)) }
        : { chunk: tuning.chunkSize, depth: tuning.queueDepth };
    if (!(this.#s.holeScan === true && streams)) return { data: fit(data) };
    return { data: fit(data), holes: fit({ chunk: Math.max(tuning.chunkSize, HOLE_SCAN.chunkBytes), depth: Math.min(tuning.queueDepth, HOLE_SCAN.streams) }) };
  }

  #stop(): void {
    this.#stopped = true;
    if (this.#cancel) Atomics.store(this.#cancel, 0, 1);
    this.#scheduler?.stop();
  }

  /**
   * Counts a finished batch. The extents a stopped stream left untouched go back to the phase's
   * source where it takes them (so the phase copies them next, shaped anew), else to `uncopied`.
   */
  #account({ extents, bytes, result }: BatchOutcome, uncopied: Array<[number, number]>, source: PhaseExtentSource): void {
    this.bytesWritten += result.bytesWritten;
    this.bytesZero += result.bytesZero;
    let notDone = 0;
    const rest: Array<[number, number]> = [];
    for (let i = result.stoppedAt ?? extents.length / 2; i < extents.length / 2; i++) {
      const offset = extents[2 * i]!;
      notDone += extents[2 * i + 1]!;
      rest.push([offset, offset + extents[2 * i + 1]!]);
    }
    if (rest.length > 0 && source.giveBack) {
      const holds: RangeHolds = result.stoppedAtData ? 'data' : 'zeros';
      for (const [start, end] of merged(rest).reverse()) source.giveBack(start, end, holds);
    } else uncopied.push(...rest);
    for (const f of result.failures) {
      const offset = extents[2 * f.index]!;
      const length = extents[2 * f.index + 1]!;
      notDone += length;
      this.#failure ??= new IoError(f.errno, f.operation, f.message, { offset, length });
    }
    this.bytesDone += bytes - notDone;
  }
}

/** True if `promise` settles within `ms` (its rejection, if any, is left for whoever awaits it). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, ms))));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** `ranges` in order, with those that touch joined. */
function merged(ranges: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [start, end] of ranges.sort((a, b) => a[0] - b[0])) {
    const last = out.at(-1);
    if (last && last[1] === start) last[1] = end;
    else out.push([start, end]);
  }
  return out;
}

/** A file spec opened the way `mode` says; other devices have no page cache of ours to choose about. */
function specFor(spec: DeviceSpec, mode: IoPlan['read']): DeviceSpec {
  return spec.kind === 'file' ? { ...spec, direct: mode === 'direct' } : spec;
}

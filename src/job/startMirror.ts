import { DirtyBitmap, MAX_GRANULARITY, MIN_GRANULARITY } from '../bitmap/DirtyBitmap.js';
import { loadBitmap } from '../bitmap/BitmapFile.js';
import { BitmapError, ErrorCode, InvalidArgumentError, StateError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { checkLocationOrSpec, deviceSpecFor, describeValue } from '../io/location.js';
import { openDevice } from '../io/openDevice.js';
import { checkTargetSize, prepareTarget } from '../io/prepareTarget.js';
import { createCopyRunner, type CopyRunner } from '../workers/createCopyRunner.js';
import { EagerCopyPool } from '../workers/EagerCopyPool.js';
import { DEFAULT_BUFFER_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_FLUSH_EVERY, DEFAULT_MIRROR_WORKERS, TASKS_PER_WORKER, streamTasksPerWorker } from '../sched/tuning.js';
import { ioModeCandidates } from './ioModeCandidates.js';
import { planConnections } from './connectionPlan.js';
import type { FirstPassPlan } from './MirrorFirstPass.js';
import { isPowerOfTwo } from '../util/size.js';
import { ERROR_POLICIES, type ErrorPolicy } from './errorPolicy.js';
import { MirrorCopier } from './MirrorCopier.js';
import { NO_CONVERGENCE_POLICIES, type NoConvergencePolicy } from './MirrorController.js';
import { MirrorJob } from './MirrorJob.js';
import { RangeLocks } from './RangeLocks.js';
import { TrackedDevice, type CopyMode, type UnsafeTestHooks } from './TrackedDevice.js';
import { WriterGate } from './WriterGate.js';
import { resolve } from 'node:path';
import { isNbdUri } from '../io/nbd/NbdUri.js';
// The state directory's modules are loaded only by jobs that keep one (start-up time).
import type { JobStateStore } from '../state/JobStateStore.js';

export { DEFAULT_BUFFER_SIZE };
/** The tuner's largest chunk. */
export const MAX_TUNED_CHUNK = 8 << 20;
/** The tuner's most operations in flight (each holds a libuv thread while it runs). */
export const MAX_TUNED_QUEUE_DEPTH = 32;

/**
 * The mirror's default granularity: 4 KiB, so a small write dirties no more than it wrote (DRBD
 * tracks 4 KiB too; QEMU's 64 KiB makes a 4 KiB write cost a 64 KiB copy). Images so large that
 * the bitmap would pass 2^27 bits (16 MiB) get a coarser one.
 */
export const DEFAULT_MIRROR_GRANULARITY = 4096;
const MAX_DEFAULT_BITS = 2 ** 27;

function defaultGranularityFor(size: number): number {
  let g = DEFAULT_MIRROR_GRANULARITY;
  while (size / g > MAX_DEFAULT_BITS) g *= 2;
  return g;
}

/** What a mirror copies: everything, only what is written from now on, or what a bitmap marks. */
export type SyncMode = 'full' | 'none' | 'bitmap';

/** Options of {@link startMirror}. Sizes in bytes. */
export interface MirrorOptions {
  /** A path (or a device spec). Opened read-write: the application writes to it through `job.device`. */
  readonly source: string | DeviceSpec;
  /** A path (created, sized to the source, if missing) or a device spec. */
  readonly target: string | DeviceSpec;
  /** Job id (default `mirror-N`). */
  readonly id?: string;
  readonly sync?: SyncMode;
  /** With `sync: 'bitmap'`: the dirty bitmap to start from, or a persistent bitmap file. */
  readonly bitmap?: DirtyBitmap | string;
  readonly copyMode?: CopyMode;
  /** Bytes per dirty bit (power of two, 512 B to 64 MiB; default 4 KiB, coarser past 2^27 bits). */
  readonly granularity?: number;
  /** Bytes in flight at most (default 16 MiB). */
  readonly bufferSize?: number;
  /** Largest extent one copy operation moves (default 1 MiB, at least the granularity). */
  readonly chunkSize?: number;
  /**
   * Copy worker threads (default `DEFAULT_MIRROR_WORKERS`: one). 0: no worker threads; the coordinator
   * copies on its own open devices, as it always does for NBD (a daemon serving writers on the same
   * thread converges faster this way: docs/perf.md, "QMP daemon").
   */
  readonly workers?: number;
  /** Copy rate limit in bytes per second (0: none). */
  readonly speed?: number;
  readonly onSourceError?: ErrorPolicy;
  readonly onTargetError?: ErrorPolicy;
  /** Pivot as soon as `complete` has synced (default); else wait in `pending` for `finalize`. */
  readonly autoFinalize?: boolean;
  /** Drop a concluded job at once (default); else keep it until `dismiss`. */
  readonly autoDismiss?: boolean;
  readonly direct?: boolean;
  /** Let the tuner move chunk size and depth (default true); false keeps `chunkSize` and `bufferSize` as given. */
  readonly adaptive?: boolean;
  /** The application's write p99 to keep under, in ms (default: twice its p99 measured in short probes once it writes). */
  readonly latencyTarget?: number;
  /**
   * When the writer outpaces the copier: `write-blocking` (switch to it, so the backlog can only
   * shrink: the default, so a job converges whatever the writer does), `report` (an event only,
   * QEMU's behaviour and the QMP daemon's), `throttle` (slow writers down).
   */
  readonly onNoConvergence?: NoConvergencePolicy;
  /**
   * Share of the best copy rate measured that the copy keeps while the application's writes are
   * over the latency target: 0 to 1, default 0.5 (`DEFAULT_MIN_COPY_SHARE`). Lower is kinder to a
   * busy application and slower to sync.
   */
  readonly minCopyShare?: number;
  /** A ready job whose backlog needs more than this many seconds of copying drops back to running (default 1). */
  readonly readyBacklogSeconds?: number;
  /**
   * Already open devices to use as the source and target (a daemon's block nodes, say) instead of
   * opening `source` and `target` again. The specs still tell worker threads how to open handles
   * of their own. The job never closes a device it was given.
   */
  readonly sourceDevice?: BlockDevice;
  readonly targetDevice?: BlockDevice;
  /**
   * A state directory (created if missing) where the job keeps its bitmap, activity log and phase,
   * so that after a crash `recoverJobState` says which image is current and `resumeMirror` copies
   * only what is left. It must not hold another job's state already (`BM_ERR_STATE_EXISTS`).
   */
  readonly state?: string;
  /** With `state`: milliseconds between checkpoints of the bitmap while it changes (default 2000). */
  readonly checkpointInterval?: number;
  /** With `state`: bytes per activity-log extent (default 4 MiB). */
  readonly logExtentSize?: number;
  /**
   * @internal With `workers` 0, worker threads for the first pass alone (default none: no pass).
   * The QMP daemon copies on its own thread but runs the first pass, which nothing paces, on
   * threads. With worker threads the pass and the copier share them.
   */
  readonly firstPassWorkers?: number;
  /** @internal Broken orders for tests of the stress test. */
  readonly unsafeTestHooks?: UnsafeTestHooks;
}

/** @internal What `resumeMirror` hands `startMirror`: the recovered generation. */
export interface ResumePoint {
  readonly generation: number;
  /** The image size the state is for. */
  readonly size: number;
}

let jobCounter = 0;

function invalid(message: string): InvalidArgumentError {
  return new InvalidArgumentError(ErrorCode.INVALID_OPTION, message);
}

function checkOptions(o: MirrorOptions): {
  granularity: number;
  chunkSize: number;
  bufferSize: number;
  queueDepth: number;
  workers: number;
  passWorkers: number;
  speed: number;
} {
  const granularity = o.granularity ?? DEFAULT_MIRROR_GRANULARITY;
  if (!isPowerOfTwo(granularity) || granularity < MIN_GRANULARITY || granularity > MAX_GRANULARITY) {
    throw invalid(`granularity must be a power of two from 512 to 64M, not ${granularity}`);
  }
  const chunkSize = Math.max(o.chunkSize ?? DEFAULT_CHUNK_SIZE, granularity);
  if (!isPowerOfTwo(chunkSize) || chunkSize > 64 << 20) throw invalid(`chunk size must be a power of two up to 64M, not ${chunkSize}`);
  const bufferSize = o.bufferSize ?? DEFAULT_BUFFER_SIZE;
  if (!Number.isSafeInteger(bufferSize) || bufferSize < chunkSize) {
    throw invalid(`buffer size must be at least one chunk (${chunkSize} bytes), not ${bufferSize}`);
  }
  const workers = o.workers ?? DEFAULT_MIRROR_WORKERS;
  if (!Number.isSafeInteger(workers) || workers < 0 || workers > 64) throw invalid(`workers must be from 0 to 64, not ${workers}`);
  const passWorkers = workers > 0 ? workers : (o.firstPassWorkers ?? 0);
  if (!Number.isSafeInteger(passWorkers) || passWorkers < 0 || passWorkers > 64) throw invalid(`firstPassWorkers must be from 0 to 64, not ${passWorkers}`);
  const speed = o.speed ?? 0;
  if (!Number.isSafeInteger(speed) || speed < 0) throw invalid(`speed must be a whole number of bytes per second, not ${speed}`);
  for (const [name, policy] of [['onSourceError', o.onSourceError], ['onTargetError', o.onTargetError]] as const) {
    if (policy !== undefined && !ERROR_POLICIES.includes(policy)) throw invalid(`${name} must be one of ${ERROR_POLICIES.join(', ')}, not ${policy}`);
  }
  if (o.sync !== undefined && !['full', 'none', 'bitmap'].includes(o.sync)) throw invalid(`sync must be full, none or bitmap, not ${o.sync}`);
  if (o.sync === 'bitmap' && o.bitmap === undefined) throw invalid(`sync 'bitmap' needs a bitmap to start from`);
  if (o.copyMode !== undefined && o.copyMode !== 'background' && o.copyMode !== 'write-blocking') {
    throw invalid(`copy mode must be background or write-blocking, not ${String(o.copyMode)}`);
  }
  if (o.onNoConvergence !== undefined && !NO_CONVERGENCE_POLICIES.includes(o.onNoConvergence)) {
    throw invalid(`onNoConvergence must be one of ${NO_CONVERGENCE_POLICIES.join(', ')}, not ${String(o.onNoConvergence)}`);
  }
  if (o.latencyTarget !== undefined && !(o.latencyTarget > 0)) throw invalid(`latency target must be a positive number of ms, not ${o.latencyTarget}`);
  if (o.minCopyShare !== undefined && !(o.minCopyShare >= 0 && o.minCopyShare <= 1)) {
    throw invalid(`minCopyShare must be a share from 0 to 1, not ${o.minCopyShare}`);
  }
  if (o.state !== undefined && (typeof o.state !== 'string' || o.state === '')) throw invalid(`state must be a directory path, not ${describeValue(o.state)}`);
  if (o.checkpointInterval !== undefined && !(o.checkpointInterval >= 10)) throw invalid(`checkpointInterval must be at least 10 ms, not ${o.checkpointInterval}`);
  if (o.logExtentSize !== undefined && (!isPowerOfTwo(o.logExtentSize) || o.logExtentSize < 4096 || o.logExtentSize > 1 << 30)) {
    throw invalid(`logExtentSize must be a power of two from 4K to 1G, not ${o.logExtentSize}`);
  }
  if (o.readyBacklogSeconds !== undefined && !(o.readyBacklogSeconds > 0)) {
    throw invalid(`readyBacklogSeconds must be positive, not ${o.readyBacklogSeconds}`);
  }
  return { granularity, chunkSize, bufferSize, queueDepth: Math.floor(bufferSize / chunkSize), workers, passWorkers, speed };
}

async function startBitmap(o: MirrorOptions, size: number, granularity: number): Promise<DirtyBitmap> {
  const bitmap = DirtyBitmap.create(size, granularity);
  const sync = o.sync ?? 'full';
  if (sync === 'full') bitmap.markAll();
  if (sync !== 'bitmap') return bitmap;
  const from = typeof o.bitmap === 'string' ? (await loadBitmap(o.bitmap, { size, granularity })).bitmap : o.bitmap!;
  if (from.size !== size || from.granularity !== granularity) {
    throw new BitmapError(
      ErrorCode.BITMAP_GEOMETRY,
      `the starting bitmap covers ${from.size} bytes at ${from.granularity} per bit; the job needs ${size} at ${granularity}`,
    );
  }
  bitmap.merge(from);
  return bitmap;
}

/** A fresh job may not take over a directory that holds a job's state (resume that instead). */
async function refuseExistingState(dir: string): Promise<void> {
  let existing;
  try {
    existing = await (await import('../state/JobStateFile.js')).readJobState(dir);
  } catch (err) {
    if (err instanceof StateError && err.code === ErrorCode.STATE_MISSING) return;
    throw err;
  }
  throw new StateError(
    ErrorCode.STATE_EXISTS,
    `${dir} already holds the state of job ${existing.id} (${existing.phase})`,
    `resume it (blockmirror mirror --resume ${dir}), or remove the directory to start over`,
  );
}

/** A location as the state directory keeps it: paths made absolute, so a resume from elsewhere finds them. */
function storedLocation(location: string | DeviceSpec): string | DeviceSpec {
  return typeof location === 'string' && !isNbdUri(location) ? resolve(location) : location;
}

async function openOwned(spec: DeviceSpec, opened: BlockDevice[]): Promise<BlockDevice> {
  const device = await openDevice(spec);
  opened.push(device);
  return device;
}

/**
 * Whether a job starts with a first pass on the bulk copy's engine (see MirrorFirstPass): a full
 * mirror between two files, in background mode, with no speed limit, through worker threads.
 * (Test hooks break the copier's orders on purpose; the pass would hide what they break.)
 */
function firstPassEligible(o: MirrorOptions, sourceSpec: DeviceSpec, targetSpec: DeviceSpec, tuning: { passWorkers: number; speed: number }): boolean {
  return (
    sourceSpec.kind === 'file' &&
    targetSpec.kind === 'file' &&
    (o.sync ?? 'full') === 'full' &&
    (o.copyMode ?? 'background') === 'background' &&
    tuning.speed === 0 &&
    tuning.passWorkers > 0 &&
    o.unsafeTestHooks === undefined
  );
}

/**
 * Starts a live mirror of `source` to `target` and resolves once it is running. Do the
 * application's I/O through `job.device` (or, on other threads, through `job.tracker()`).
 */
export async function startMirror(options: MirrorOptions): Promise<MirrorJob> {
  return startMirrorAt(options, undefined);
}

/** @internal {@link startMirror}, or a resume of the job of `options.state` when `resume` is given. */
export async function startMirrorAt(options: MirrorOptions, resume: ResumePoint | undefined): Promise<MirrorJob> {
  if (typeof options !== 'object' || options === null) {
    throw invalid(`startMirror takes one options object ({ source, target, ... }), not ${describeValue(options)}`);
  }
  const tuning = checkOptions(options);
  if (options.state !== undefined && !resume) await refuseExistingState(options.state);
  const sourceLocation = checkLocationOrSpec(options.source, 'source');
  const targetLocation = checkLocationOrSpec(options.target, 'target');
  const sourceSpec =
    typeof sourceLocation === 'string' ? deviceSpecFor(sourceLocation, { role: 'source', writable: true, direct: options.direct }) : sourceLocation;
  const targetSpec =
    typeof targetLocation === 'string' ? deviceSpecFor(targetLocation, { role: 'target', writable: true, direct: options.direct }) : targetLocation;
  const bulk = firstPassEligible(options, sourceSpec, targetSpec, tuning);
  const tasksPerWorker = bulk ? streamTasksPerWorker(tuning.queueDepth, tuning.passWorkers) : TASKS_PER_WORKER;
  // Started before the devices are opened, as a bulk copy's: the threads boot meanwhile, and until
  // they are up the coordinator copies (see EagerCopyPool). The copier uses them too unless it
  // copies on the coordinator (workers 0), in which case they are the pass's own.
  const eager = bulk ? new EagerCopyPool({ workers: tuning.passWorkers, tasksPerWorker }, { source: sourceSpec, target: targetSpec }) : undefined;
  let runner: CopyRunner | undefined = tuning.workers > 0 ? eager : undefined;
  /** Threads of the pass's own (closed here if the job does not start, else by the pass). */
  let passPool: CopyRunner | undefined = tuning.workers > 0 ? undefined : eager;
  const opened: BlockDevice[] = [];
  let state: JobStateStore | undefined;
  try {
    const source = options.sourceDevice ?? (await openOwned(sourceSpec, opened));
    if (resume && source.size !== resume.size) {
      throw new StateError(ErrorCode.STATE_MISMATCH, `${source.description} is now ${source.size} bytes; the state of ${options.state} is for a ${resume.size}-byte image`);
    }
    const created = options.targetDevice ? false : (await prepareTarget(targetSpec, sourceSpec, source.size)).created;
    const target = options.targetDevice ?? (await openOwned(targetSpec, opened));
    checkTargetSize(target.description, target.size, source.size);

    if (options.granularity === undefined) tuning.granularity = Math.max(tuning.granularity, defaultGranularityFor(source.size));
    const bitmap = await startBitmap(options, source.size, tuning.granularity);
    const gate = WriterGate.create();
    const locks = new RangeLocks();
    // The job and its parts refer to each other through these callbacks.
    let job: MirrorJob | undefined;
    const id = options.id ?? `mirror-${++jobCounter}`;
    state =
      options.state === undefined
        ? undefined
        : await (await import('../state/JobStateStore.js')).JobStateStore.open({
            dir: options.state,
            id,
            source: storedLocation(sourceLocation),
            target: storedLocation(targetLocation),
            bitmap,
            generation: resume?.generation ?? 0,
            extentSize: options.logExtentSize,
            checkpointIntervalMs: options.checkpointInterval,
            flushTarget: () => target.flush(),
            onError: (err) => job?.handleStateError(err),
          });
    const device = new TrackedDevice({
      source,
      target,
      bitmap,
      gate,
      locks,
      copyMode: options.copyMode ?? 'background',
      journal: state,
      testHooks: options.unsafeTestHooks,
      listener: {
        onDirtied: () => job?.notifyDirty(),
        onTargetWriteError: (err) => job?.handleTargetWriteError(err),
        onWriteLatency: (micros) => job?.recordAppLatency(micros),
      },
    });
    const { runner: copyRunner, plan } = createCopyRunner(source, target, sourceSpec, { workers: tuning.workers, tasksPerWorker, pool: runner });
    runner = copyRunner;
    // Files behind the file specs, not an NBD export the coordinator must keep to itself.
    const passRuns = bulk && !planConnections(source, target).inline;
    if (!passRuns && passPool) {
      void passPool.close().catch(() => undefined);
      passPool = undefined;
    }
    const chunkSize = Math.min(tuning.chunkSize, source.maxRequest, target.maxRequest);
    const firstPass: FirstPassPlan | undefined = passRuns
      ? {
          source,
          target,
          tuning: { chunkSize, queueDepth: tuning.queueDepth, workers: tuning.passWorkers, speed: 0, flushEvery: DEFAULT_FLUSH_EVERY },
          modes: await ioModeCandidates(sourceSpec, targetSpec, { direct: options.direct }, { pooled: true, limited: false, size: source.size }),
          // Nothing but the pass writes the target while it runs: the application writes the
          // source (background mode), and the mirror's copier starts only once the pass has ended.
          targetIsZero: created,
          largeRequests: options.chunkSize === undefined,
          ...(passPool ? { ownRunner: passPool } : {}),
        }
      : undefined;
    const copier = new MirrorCopier({
      runner: copyRunner,
      source: sourceSpec,
      target: targetSpec,
      bitmap,
      locks,
      chunkSize,
      queueDepth: tuning.queueDepth,
      workers: plan.inline ? 1 : tuning.workers,
      speed: tuning.speed,
      testHooks: options.unsafeTestHooks,
      flushTarget: () => target.flush(),
      flushEvery: DEFAULT_FLUSH_EVERY,
      onFailures: (failed) => job?.handleCopyFailures(failed),
      onFlushError: (err) => job?.handleTargetFlushError(err),
      unflushed: state?.unflushed,
      ...(firstPass ? { firstPass } : {}),
    });
    job = new MirrorJob({
      id,
      size: source.size,
      sourceSpec,
      targetSpec,
      source,
      target,
      ownedDevices: [...opened],
      bitmap,
      gate,
      locks,
      device,
      copier,
      onSourceError: options.onSourceError ?? 'report',
      onTargetError: options.onTargetError ?? 'report',
      autoFinalize: options.autoFinalize ?? true,
      autoDismiss: options.autoDismiss ?? true,
      testHooks: options.unsafeTestHooks,
      state,
      control: {
        workers: plan.inline ? 1 : tuning.workers,
        limits: {
          minChunk: tuning.granularity,
          maxChunk: Math.min(Math.max(MAX_TUNED_CHUNK, tuning.chunkSize), source.maxRequest, target.maxRequest),
          maxInFlight: tuning.bufferSize,
          maxQueueDepth: Math.max(tuning.queueDepth, MAX_TUNED_QUEUE_DEPTH),
          ...(options.minCopyShare !== undefined ? { minCopyShare: options.minCopyShare } : {}),
        },
        initial: { chunkSize, inFlight: tuning.bufferSize },
        adaptive: options.adaptive ?? true,
        latencyTargetMs: options.latencyTarget,
        onNoConvergence: options.onNoConvergence ?? 'write-blocking',
        readyBacklogSeconds: options.readyBacklogSeconds ?? 1,
      },
    });
    job.start();
    return job;
  } catch (err) {
    await runner?.close().catch(() => undefined);
    await passPool?.close().catch(() => undefined);
    if (state) {
      await state.setPhase('stopped', false).catch(() => undefined);
      await state.close().catch(() => undefined);
    }
    await Promise.all(opened.map((d) => d.close()));
    throw err;
  }
}

import { performance } from 'node:perf_hooks';
import { ChunkTuner, MIN_SAMPLES, type TunerLimits, type TunerWindow, type TuningDecision } from '../sched/ChunkTuner.js';
import { ConvergenceDetector, type ConvergenceState } from '../sched/ConvergenceDetector.js';
import { LatencyWindow, type LatencyStats } from '../sched/LatencyWindow.js';
import { batchExtentsFor } from '../sched/tuning.js';
import type { MirrorCopier } from './MirrorCopier.js';
import type { WriterGate } from './WriterGate.js';

/** What a job does when the writer outpaces the copier. */
export type NoConvergencePolicy = 'report' | 'write-blocking' | 'throttle';
export const NO_CONVERGENCE_POLICIES: readonly NoConvergencePolicy[] = ['report', 'write-blocking', 'throttle'];

/** The payload of a job's `convergence` event: the detector's view, and what the job did. */
export interface ConvergenceEvent extends ConvergenceState {
  /** `none` when converging; otherwise what the policy did this time. */
  readonly action: 'none' | 'reported' | 'write-blocking' | 'throttle';
  /** Microseconds each tracked write is delayed (the `throttle` policy). */
  readonly throttle: number;
}

/** The payload of a job's `ready-lost` event. */
export interface ReadyLostEvent {
  readonly backlogBytes: number;
  readonly thresholdBytes: number;
  readonly reason: string;
}

/** What the controller needs from its job. */
export interface ControlledJob {
  readonly status: string;
  readonly copyMode: 'background' | 'write-blocking';
  /** Bytes dirty or in flight, and bytes copied so far. */
  backlog(): { backlogBytes: number; copiedBytes: number };
  onTuning(decision: TuningDecision): void;
  onConvergence(event: ConvergenceEvent): void;
  switchToWriteBlocking(): Promise<void>;
  dropReady(event: ReadyLostEvent): void;
}

export interface MirrorControllerOptions {
  readonly copier: MirrorCopier;
  readonly gate: WriterGate;
  readonly workers: number;
  readonly limits: TunerLimits;
  readonly initial: { chunkSize: number; inFlight: number };
  /** Adapt chunk size and depth (false: keep the given ones). */
  readonly adaptive: boolean;
  /** The application's write p99 to stay under, ms; undefined: twice the p99 measured before the copy ramps up. */
  readonly latencyTargetMs: number | undefined;
  readonly onNoConvergence: NoConvergencePolicy;
  /** A ready job whose backlog needs more than this many seconds of copying drops back to running. */
  readonly readyBacklogSeconds: number;
}

/** Decisions are taken this often, each from the window since the last. */
export const CONTROL_INTERVAL_MS = 100;
/**
 * The application's unloaded latency is learned in probes (as BBR's ProbeRTT drains its queue to
 * see the path's own delay): the copy drops to a crawl for this long while the application's p99
 * is measured, three windows, so that the median leaves out the first, in which the copies in
 * flight drain. The copy runs at full speed between probes.
 */
const PROBE_MS = 300;
/** The first probe is five windows: the median also leaves out the job's own start (its worker threads starting up). */
const FIRST_PROBE_MS = 500;
/** A probe that has seen fewer application writes than this goes on, up to {@link PROBE_MAX_MS}. */
const BASELINE_MIN_WRITES = 30;
const PROBE_MAX_MS = 1000;
/** While the application writes and there is copying to do, a probe every this often follows its latency as it drifts. */
const PROBE_EVERY_MS = 10_000;
/** A window with this many application writes counts as the application writing. */
const BASELINE_TRIGGER_WRITES = 10;
/**
 * The first probe waits until the application has been writing this long with the copy at full
 * speed: a job that is in sync sooner never needed to know (a short job lost a third of its time
 * to a probe: docs/perf.md, "QMP daemon", second pass).
 */
const FIRST_PROBE_AFTER_MS = 1000;
/**
 * A first pass that would be done within this many seconds, at its mean rate so far, finishes at
 * full speed before the first probe, as QEMU's copy runs to its end. A probe would end it, and the
 * copier the controller paces then copies the rest slower and on more CPU per byte, so a heavy
 * writer lost more than it gained: 4 GiB under an unthrottled fio writer, the writer kept
 * 0.43-0.73 x QEMU's IOPS with the pass ended at the probe, 1.25-1.75 x with the pass run to its
 * end (docs/perf.md, "QMP daemon"). The bound keeps a large image's pass from holding a busy
 * application back for long: past it the probe ends the pass, and the copy is paced.
 */
const PASS_FREE_SECONDS = 10;
/** During a probe the copier crawls at this rate (bytes per second). */
const BASELINE_PACE = 1 << 20;
/** The default latency target is this multiple of the baseline p99. */
const TARGET_OVER_BASELINE = 2;
/**
 * A measured target is measured again after this many windows in a row with the application over
 * it and the copy at the tuner's floor: what slows the application then is not the copy (in
 * write-blocking mode, its own writes to the target), and holding the copy back only delays sync.
 */
const STUCK_WINDOWS = 10;
/**
 * A measurement for being stuck that finds a target within this factor of the old one says the
 * copy at its floor is what held the application back after all: no more of those until the copy
 * mode changes, or the job would cycle between crawling, ramping up and backing off.
 */
const SAME_TARGET = 1.1;
/** A ready job never drops back for a backlog smaller than this. */
const READY_BACKLOG_FLOOR = 16 << 20;
/**
 * The throttle policy delays each tracked write by this much at first, and doubles the delay
 * every interval the job still does not converge; it halves it again every interval the copier
 * is well ahead, and lifts it once it is below the start.
 */
const THROTTLE_START_MICROS = 1000;
const THROTTLE_EVERY_MS = 1000;
/** The throttle rises while the copier cleans less than this multiple of what is dirtied... */
const THROTTLE_RAISE_MARGIN = 1.5;
/** ...and eases off once it cleans more than this multiple. */
const THROTTLE_EASE_MARGIN = 3;

/** A probe under way: since when, the writes seen, each window's p99 (µs). */
interface Baseline {
  readonly since: number;
  writes: number;
  readonly p99s: number[];
  /** The target before, when the measurement is for a tuner stuck at its floor. */
  readonly stuckAt?: number;
}

/**
 * The job's control loop (every 100 ms): feeds the chunk tuner and the convergence detector from
 * the last window, applies the tuner's chunk size and depth to the copier, acts on
 * non-convergence as the job's policy says, and drops a ready job back to running when its
 * backlog has grown past a second of copying. Without a target given, the application's unloaded
 * latency is learned in short probes (the copy crawls for 0.3 s): once it starts writing, every
 * 10 s while it writes and there is copying to do, and when its writes change cost (after a
 * switch to write-blocking, or when the copy held at the tuner's floor leaves it over the target
 * for a second).
 */
export class MirrorController {
  /** The application's intercepted writes; the job's interceptors record into it. */
  readonly appLatency = new LatencyWindow();
  readonly #o: MirrorControllerOptions;
  readonly #job: ControlledJob;
  #tuner: ChunkTuner;
  readonly #detector = new ConvergenceDetector();
  #state: ConvergenceState | undefined;
  #timer: NodeJS.Timeout | undefined;
  #last: { at: number; copied: number } | undefined;
  #started = 0;
  /**
   * The latency target's source: `done` once known (given, or measured); `idle` while no
   * application writes have been seen to measure; a measurement in progress otherwise.
   */
  #baseline: 'done' | 'idle' | Baseline;
  #lastThrottleStep = 0;
  #switching = false;
  /** The latency target is measured (adaptive, and none given), so it may be measured again. */
  readonly #measuresTarget: boolean;
  /** When the last probe ended (ms). */
  #lastProbe = 0;
  /** When the application was first seen writing (ms). */
  #appSince: number | undefined;
  /** Windows in a row with the application over the target and the copy at the tuner's floor. */
  #stuck = 0;
  /** The copy mode changed: measure the target again at the next window. */
  #remeasureDue = false;
  /** Whether being stuck at the floor may start a measurement (until one finds the same target). */
  #stuckMayRemeasure: boolean;
  /** A first pass ran at the last window (the window after it ends is still partly its). */
  #passSeen = false;

  constructor(job: ControlledJob, options: MirrorControllerOptions) {
    this.#job = job;
    this.#o = options;
    const target = options.latencyTargetMs === undefined ? undefined : options.latencyTargetMs * 1000;
    this.#measuresTarget = options.adaptive && target === undefined;
    this.#stuckMayRemeasure = this.#measuresTarget;
    // The copy starts at full speed, as QEMU's does; the application's latency is measured once it writes.
    this.#baseline = this.#measuresTarget ? 'idle' : 'done';
    this.#tuner = new ChunkTuner(options.limits, options.initial, target);
  }

  /** The latest convergence view (rates for progress reports). */
  get state(): ConvergenceState | undefined {
    return this.#state;
  }

  get latencyTargetMicros(): number | undefined {
    return this.#tuner.latencyTarget;
  }

  start(): void {
    this.#started = performance.now();
    this.#apply(this.#tuner.chunkSize, this.#tuner.queueDepth);
    this.#timer = setInterval(() => this.tick(performance.now()), CONTROL_INTERVAL_MS).unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#o.gate.setThrottle(0);
  }

  /** One control step; `nowMs` is the current time (tests pass their own clock). */
  tick(nowMs: number): void {
    const { backlogBytes, copiedBytes } = this.#job.backlog();
    const last = this.#last ?? { at: this.#started, copied: 0 };
    this.#last = { at: nowMs, copied: copiedBytes };
    const app = this.appLatency.take();
    const dispatched = this.#o.copier.scheduler.takeDispatched();
    this.#tune(nowMs, {
      seconds: (nowMs - last.at) / 1000,
      bytesCopied: copiedBytes - last.copied,
      backlogBytes,
      app,
      rateLimited: this.#o.copier.scheduler.takeRateLimited() && this.#o.copier.limitedByUser,
      ...(dispatched.extents > 0 ? { meanExtentBytes: dispatched.bytes / dispatched.extents } : {}),
    });
    this.#converge(nowMs, backlogBytes, copiedBytes);
  }

  #tune(nowMs: number, window: Parameters<ChunkTuner['decide']>[0]): void {
    if (!this.#o.adaptive) return;
    const b = this.#baseline;
    if (b === 'idle' && window.app.count >= BASELINE_TRIGGER_WRITES) {
      this.#appSince ??= nowMs;
      if (nowMs - this.#appSince >= FIRST_PROBE_AFTER_MS && !this.#probeCanWait(nowMs, window)) {
        this.#beginBaseline(nowMs); // the application has been writing for a while: learn what it costs it
        return;
      }
    }
    // A measurement under way when the mode changed is partly of the old mode: start it over.
    if (this.#remeasureDue && b !== 'idle') return this.#remeasure(nowMs, window);
    if (typeof b === 'object') {
      this.#collectBaseline(nowMs, b, window.app);
      return;
    }
    // The application's own latency may drift (another tenant, the page cache filling): probe again now and then.
    if (b === 'done' && this.#measuresTarget && nowMs - this.#lastProbe >= PROBE_EVERY_MS && window.app.count >= BASELINE_TRIGGER_WRITES && window.backlogBytes > 0) {
      this.#beginBaseline(nowMs);
      return;
    }
    if (this.#passWindows(window)) return;
    const decision = this.#tuner.decide(window);
    this.#stuck = decision.reason === 'app-latency' && this.#tuner.atFloor ? this.#stuck + 1 : 0;
    if (this.#stuck >= STUCK_WINDOWS && this.#stuckMayRemeasure) {
      return this.#remeasure(nowMs, window, this.#tuner.latencyTarget);
    }
    this.#apply(decision.chunkSize, decision.queueDepth);
    this.#o.copier.setPace(decision.pace);
    this.#job.onTuning(decision);
  }

  /**
   * Whether the first probe can wait: while a first pass would copy what is left within
   * {@link PASS_FREE_SECONDS} at its mean rate since the job started (everything copied so far is
   * the pass's), it is let finish; and while the backlog is no more than a ready job may carry, the
   * job is about to be ready, and a probe would only hold it back (crawling, the copier falls
   * behind what the application dirties meanwhile).
   */
  #probeCanWait(nowMs: number, window: TunerWindow): boolean {
    if (window.backlogBytes <= this.#readyBacklogLimit()) return true;
    const seconds = (nowMs - this.#started) / 1000;
    if (!this.#o.copier.firstPassRunning || !(seconds > 0)) return false;
    const rate = (this.#last?.copied ?? 0) / seconds;
    return rate > 0 && window.backlogBytes < rate * PASS_FREE_SECONDS;
  }

  /** The largest backlog a ready job may carry: what the copier cleans in `readyBacklogSeconds`, at least 16 MiB. */
  #readyBacklogLimit(): number {
    return Math.max(READY_BACKLOG_FLOOR, (this.#state?.cleanRate ?? 0) * this.#o.readyBacklogSeconds);
  }

  /**
   * While a first pass runs, and for the window in which it ended, the tuner decides nothing: the
   * bytes copied are the pass's (hole scans at tens of GB/s), and a best rate learned from them
   * would set the copier's floor far above what it can do. The pass is only watched: the
   * application over its target ends it (it has no pace to slow down to).
   */
  #passWindows(window: TunerWindow): boolean {
    const running = this.#o.copier.firstPassRunning;
    const skip = running || this.#passSeen;
    this.#passSeen = running;
    const target = this.#tuner.latencyTarget;
    if (running && target !== undefined && window.app.count >= MIN_SAMPLES && window.app.p99 > target) {
      this.#o.copier.endFirstPass("the application's writes were over the latency target");
    }
    return skip;
  }

  /**
   * Measures a measured target again, when what the application's writes cost has changed under
   * it: after a switch to write-blocking mode, or when the copy at its floor could not bring the
   * application back under the target.
   */
  #remeasure(nowMs: number, window: TunerWindow, stuckAt?: number): void {
    this.#stuck = 0;
    this.#beginBaseline(nowMs, stuckAt);
    this.#job.onTuning({
      chunkSize: this.#o.initial.chunkSize,
      queueDepth: 1,
      inFlight: this.#o.initial.chunkSize,
      pace: BASELINE_PACE,
      reason: 'remeasure',
      throughput: window.seconds > 0 ? window.bytesCopied / window.seconds : 0,
      appP99: window.app.count > 0 ? window.app.p99 : undefined,
      latencyTarget: this.#tuner.latencyTarget,
    });
  }

  /** A probe: the copier crawls while the application's own write latency is measured. */
  #beginBaseline(nowMs: number, stuckAt?: number): void {
    this.#remeasureDue = false;
    this.#baseline = { since: nowMs, writes: 0, p99s: [], ...(stuckAt === undefined ? {} : { stuckAt }) };
    this.#o.copier.endFirstPass("the copy slowed down to measure the application's own latency");
    this.#apply(this.#o.initial.chunkSize, 1);
    this.#o.copier.setPace(BASELINE_PACE);
  }

  /**
   * The application's p99 with the copier barely running, the median window's: the default
   * target is twice it. The copy then goes back to where the tuner had it (at first, full speed):
   * a probe moves the target, not the copy, which slows down only if the application is hurt.
   */
  #collectBaseline(nowMs: number, b: Baseline, app: LatencyStats): void {
    if (app.count > 0) {
      b.p99s.push(app.p99);
      b.writes += app.count;
    }
    const elapsed = nowMs - b.since;
    if (elapsed < (this.#lastProbe === 0 ? FIRST_PROBE_MS : PROBE_MS) || (b.writes < BASELINE_MIN_WRITES && elapsed < PROBE_MAX_MS)) return;
    this.#lastProbe = nowMs;
    this.#apply(this.#tuner.chunkSize, this.#tuner.queueDepth);
    this.#o.copier.setPace(this.#tuner.pace);
    if (b.writes < BASELINE_MIN_WRITES) {
      // Too few writes to tell: keep what the tuner had, and measure once the application writes more.
      if (this.#tuner.latencyTarget === undefined) this.#baseline = 'idle';
      else this.#baseline = 'done';
      return;
    }
    this.#baseline = 'done';
    const p99s = b.p99s.sort((x, y) => x - y);
    const target = TARGET_OVER_BASELINE * p99s[p99s.length >> 1]!;
    if (b.stuckAt !== undefined && target <= SAME_TARGET * b.stuckAt) this.#stuckMayRemeasure = false;
    this.#tuner.setLatencyTarget(target);
  }

  #apply(chunkSize: number, queueDepth: number): void {
    const s = this.#o.copier.scheduler.options;
    s.chunkSize = chunkSize;
    s.queueDepth = queueDepth;
    s.batchExtents = batchExtentsFor(queueDepth, this.#o.workers);
  }

  #converge(nowMs: number, backlogBytes: number, copiedBytes: number): void {
    const job = this.#job;
    const previous = this.#state;
    const state = this.#detector.sample({ nowMs, backlogBytes, dirtiedBytes: copiedBytes + backlogBytes, copiedBytes });
    this.#state = state;
    const gate = this.#o.gate;

    if (job.status === 'ready') {
      const threshold = this.#readyBacklogLimit();
      if (backlogBytes > threshold) {
        job.dropReady({
          backlogBytes,
          thresholdBytes: threshold,
          reason: `backlog of ${(backlogBytes / 2 ** 20).toFixed(1)} MiB needs more than ${this.#o.readyBacklogSeconds} s of copying`,
        });
      }
    }

    if (this.#o.onNoConvergence === 'throttle') {
      this.#steerThrottle(nowMs, state, backlogBytes);
      return;
    }
    if (state.converging) {
      if (previous && !previous.converging) job.onConvergence({ ...state, action: 'none', throttle: gate.throttle });
      return;
    }
    switch (this.#o.onNoConvergence) {
      case 'report':
        if (!previous || previous.converging) job.onConvergence({ ...state, action: 'reported', throttle: gate.throttle });
        return;
      case 'write-blocking':
        if (job.copyMode === 'background' && !this.#switching) {
          this.#switching = true;
          void job.switchToWriteBlocking().then(() => {
            job.onConvergence({ ...state, action: 'write-blocking', throttle: gate.throttle });
            // Writes to copied granules now go to both sides: the application's own p99 changes.
            if (job.copyMode === 'write-blocking' && this.#measuresTarget) {
              this.#remeasureDue = true;
              this.#stuckMayRemeasure = true;
            }
          });
        }
        return;
    }
  }

  /**
   * The throttle policy: doubles the delay of every tracked write each second while the copier is
   * not clearly gaining (not converging, or cleaning less than 1.5 times what is dirtied), halves
   * it each second once the copier is far ahead (or in sync), and lifts it below the start.
   */
  #steerThrottle(nowMs: number, state: ConvergenceState, backlogBytes: number): void {
    const gate = this.#o.gate;
    if (nowMs - this.#lastThrottleStep < THROTTLE_EVERY_MS) return;
    const losing = !state.converging || (backlogBytes > 0 && state.cleanRate < THROTTLE_RAISE_MARGIN * state.dirtyRate);
    const farAhead = backlogBytes === 0 || state.cleanRate > THROTTLE_EASE_MARGIN * state.dirtyRate;
    let next = gate.throttle;
    if (losing) next = gate.throttle === 0 ? THROTTLE_START_MICROS : gate.throttle * 2;
    else if (farAhead && gate.throttle > 0) next = gate.throttle / 2 < THROTTLE_START_MICROS ? 0 : gate.throttle / 2;
    if (next === gate.throttle) return;
    this.#lastThrottleStep = nowMs;
    gate.setThrottle(next);
    this.#job.onConvergence({ ...state, action: 'throttle', throttle: gate.throttle });
  }
}

import { RateMeter } from './RateMeter.js';

/** A sample of a mirror's totals. Bytes are running totals since the start. */
export interface ConvergenceSample {
  readonly nowMs: number;
  /** Bytes dirty or in flight now. */
  readonly backlogBytes: number;
  /** Bytes ever dirtied (QEMU's len: copied + backlog). */
  readonly dirtiedBytes: number;
  /** Bytes copied so far (QEMU's offset). */
  readonly copiedBytes: number;
}

/** What the detector concludes. Rates in bytes per second. */
export interface ConvergenceState {
  readonly converging: boolean;
  readonly reason: string;
  /** Smoothed rate of newly dirtied bytes. */
  readonly dirtyRate: number;
  /** Smoothed rate of copied bytes. */
  readonly cleanRate: number;
  /** Seconds until the backlog is gone at these rates (Infinity if it is not shrinking). */
  readonly etaSeconds: number;
}

export interface ConvergenceOptions {
  /** How long the backlog must fail to shrink before the job is called non-converging. */
  readonly windowMs?: number;
  /** Smoothing of the rates. */
  readonly halfLifeMs?: number;
}

const DEFAULT_WINDOW_MS = 3000;
/**
 * A writer that re-dirties at least this share of what the copier cleans, for a whole (shorter)
 * window, while the backlog is still more than a second of copying, makes the job copy the same
 * extents again and again: counted as not converging too, long before the backlog stops
 * shrinking (in a bulk copy it shrinks for a long while anyway). A quarter means a copy that
 * would end up moving a third more than the image.
 */
const REDIRTY_SHARE = 0.25;
const REDIRTY_WINDOW_MS = 1000;
/** The backlog must fall by at least this share over the window to count as shrinking. */
const MIN_SHRINK = 0.05;
/** A copier barely faster than the writer still converges, too slowly to tell from noise. */
const RATE_MARGIN = 1.1;

/**
 * Tells whether a mirror is converging: the writer dirties bytes (dirty rate) while the copier
 * cleans them (clean rate). It is not converging when, over the last window, the backlog has not
 * shrunk and the copier is not clearly faster than the writer; or when, for a second, the writer
 * re-dirties a quarter or more of what the copier cleans while much is left to copy (the job then
 * copies many extents several times over). QEMU's mirror has no such signal, and under a heavy
 * writer it copies forever. Pure: samples come with their time.
 */
export class ConvergenceDetector {
  readonly #windowMs: number;
  readonly #dirty: RateMeter;
  readonly #clean: RateMeter;
  readonly #history: Array<{ at: number; backlog: number }> = [];
  #started: number | undefined;
  /** Since when the writer has re-dirtied at least REDIRTY_SHARE of what is cleaned (undefined: not now). */
  #redirtySince: number | undefined;

  constructor(options: ConvergenceOptions = {}) {
    this.#windowMs = options.windowMs ?? DEFAULT_WINDOW_MS;
    this.#dirty = new RateMeter(options.halfLifeMs);
    this.#clean = new RateMeter(options.halfLifeMs);
  }

  sample(s: ConvergenceSample): ConvergenceState {
    this.#started ??= s.nowMs;
    const dirtyRate = this.#dirty.sample(s.dirtiedBytes, s.nowMs);
    const cleanRate = this.#clean.sample(s.copiedBytes, s.nowMs);
    this.#history.push({ at: s.nowMs, backlog: s.backlogBytes });
    while (this.#history.length > 1 && this.#history[1]!.at <= s.nowMs - this.#windowMs) this.#history.shift();
    const net = cleanRate - dirtyRate;
    const etaSeconds = s.backlogBytes === 0 ? 0 : net > 0 ? s.backlogBytes / net : Number.POSITIVE_INFINITY;
    const state = (converging: boolean, reason: string): ConvergenceState => ({ converging, reason, dirtyRate, cleanRate, etaSeconds });

    // In sync, the copier cleans what is dirtied as it comes: only a large backlog can be re-dirtied.
    const redirtying = cleanRate > 0 && s.backlogBytes > cleanRate && dirtyRate >= REDIRTY_SHARE * cleanRate;
    this.#redirtySince = redirtying ? (this.#redirtySince ?? s.nowMs) : undefined;
    if (s.backlogBytes === 0) return state(true, 'in sync');
    if (this.#redirtySince !== undefined && s.nowMs - this.#redirtySince >= REDIRTY_WINDOW_MS) {
      return state(
        false,
        `not converging: writes re-dirty ${mib(dirtyRate)} MiB/s, ${((100 * dirtyRate) / cleanRate).toFixed(0)} % of the ${mib(cleanRate)} MiB/s the copier cleans, ` +
          `for ${((s.nowMs - this.#redirtySince) / 1000).toFixed(1)} s`,
      );
    }
    const oldest = this.#history[0]!;
    const watchedMs = s.nowMs - oldest.at;
    if (watchedMs < this.#windowMs || s.nowMs - this.#started < this.#windowMs) return state(true, 'measuring');
    const shrinking = s.backlogBytes < oldest.backlog * (1 - MIN_SHRINK);
    // A backlog under a second of copying is a copier keeping up, whatever it does meanwhile.
    const small = s.backlogBytes <= cleanRate;
    if (shrinking || small || cleanRate > dirtyRate * RATE_MARGIN) {
      return state(true, Number.isFinite(etaSeconds) ? `backlog shrinking, in sync in about ${etaSeconds.toFixed(1)} s` : 'backlog shrinking');
    }
    return state(
      false,
      `not converging: writes dirty ${mib(dirtyRate)} MiB/s, the copier cleans ${mib(cleanRate)} MiB/s, ` +
        `and the backlog (${mib(s.backlogBytes)} MiB) has not shrunk in ${(watchedMs / 1000).toFixed(1)} s`,
    );
  }
}

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

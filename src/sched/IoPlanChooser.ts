/**
 * Chooses how a bulk copy of files reads its source and writes its target (through the page
 * cache or with O_DIRECT) by measuring the candidates on the copy itself, since which is faster
 * depends on the disk and the moment (docs/perf.md): the same setting was 2–3× faster on one
 * machine and slower on the next.
 *
 * The copy runs as a sequence of phases. The first ones are trials: a window of the image is cut
 * into slices dealt round-robin to the plans on trial, and each plan copies its slices as one
 * phase, so every plan sees the same mix of data and holes. The first window tries the write
 * modes (with the preferred read mode); on a copy large enough, a second tries the other read mode
 * against the winner. A phase's rate is its bytes per
 * second of wall time, its flush included when it wrote through the page cache, so write-back
 * that the cache defers is charged to the plan that caused it. The fastest plan then copies; now
 * and then a re-trial deals a window between it and the runner-up, and the runner-up takes over
 * if it is clearly faster. Each time it loses, the next re-trial waits twice as long, so a plan
 * that is slow here costs little.
 */

/** How one side of the copy does its I/O. */
export type IoMode = 'buffered' | 'direct';

/** How the source is read and the target written. */
export interface IoPlan {
  readonly read: IoMode;
  readonly write: IoMode;
}

/** One measured trial phase of a plan. */
export interface PlanTrial {
  readonly plan: IoPlan;
  /** Bytes of the image the phase covered. */
  readonly bytes: number;
  readonly seconds: number;
  /** bytes / seconds. */
  readonly rate: number;
  /** Cut short at its deadline: the plan is slower than `rate` says, by how much unknown. */
  readonly cut?: boolean;
}

/** The plan a copy settled on, and why. */
export interface IoPlanChoice {
  readonly plan: IoPlan;
  /** How it was chosen: by trials on the copy, as asked, or fixed without measuring (see `reason`). */
  readonly basis: 'measured' | 'asked' | 'fixed';
  /** Why this plan, in words: the rates measured, or why nothing was. */
  readonly reason: string;
  /** Every trial phase, in order (empty when nothing was measured). */
  readonly trials: readonly PlanTrial[];
  /** Times the plan changed after the first choice (a re-trial found the runner-up faster). */
  readonly switches: number;
}

/** One phase to run: the byte ranges `[start, end)` it copies, in order, with `plan`. */
export interface CopyPhase {
  readonly ranges: ReadonlyArray<readonly [number, number]>;
  readonly plan: IoPlan;
  /** True for a trial phase, whose rate decides the plan. */
  readonly trial: boolean;
  /**
   * A short unmeasured phase before the first trial: it starts the worker threads, a one-off
   * cost that would otherwise be charged to whichever plan goes first.
   */
  readonly warmup?: boolean;
}

/** Copies smaller than this are not measured: they end before a trial could tell the plans apart. */
export const MIN_MEASURED_BYTES = 256 << 20;
/** Bounds of the bytes each plan copies in a trial (otherwise 1/16 of the image). */
export const MIN_TRIAL_BYTES = 64 << 20;
export const MAX_TRIAL_BYTES = 128 << 20;
/** Copies smaller than this keep the preferred read mode: a second trial window would cost more than it could win. */
export const MIN_READ_TRIAL_BYTES = 2 * 2 ** 30;
/** A trial window is dealt to the plans in slices of this many chunks, and at least {@link MIN_SLICE_BYTES}. */
export const SLICE_CHUNKS = 8;
export const MIN_SLICE_BYTES = 4 << 20;
/** The first run of the chosen plan before a re-trial is this many trial lengths; it doubles each time the runner-up loses. */
export const FIRST_RUN_TRIALS = 16;
/** A plan must be this much faster to be preferred (noise on a shared disk is about this large). */
export const SWITCH_MARGIN = 1.1;
/**
 * The chosen plan runs in measured segments of this many trial lengths (each ends in a drain of
 * the copy). A segment that held too little data (see {@link MIN_TRIAL_DATA_SHARE}) doubles the
 * next one: holes measure nothing, and over a mostly-hole image each segment's drain and start
 * cost more than its scan (64 GiB holding 1 GiB ran as 126 segments of 512 MiB).
 */
export const SEGMENT_TRIALS = 4;
/** A run segment this many times slower than its plan's measured rate counts as slow... */
export const SLOWDOWN_FACTOR = 1.5;
/** ...and this many slow segments in a row bring the next re-trial forward. */
export const SLOW_SEGMENTS = 2;
/** A runner-up this many times slower than the plan in force is not tried again: its gap is the kind a disk does not close. */
export const HOPELESS_FACTOR = 2;

/**
 * A trial in which a plan copied less than this share of its bytes as data (a window of a
 * hole-scanned source that fell on holes, which every plan scans alike) tells the plans apart
 * no better than noise: its window is dealt again further on.
 */
export const MIN_TRIAL_DATA_SHARE = 0.25;
/**
 * Windows in a row dealt again for want of data before the chooser gives up looking (an image of
 * holes has no data to find). Each window is short phases of small slices: a 64 GiB image holding
 * 1 GiB in eight runs spent about 0.13 s on each search of nine windows, five times over.
 */
export const MAX_THIN_WINDOWS = 3;

/** What a phase did, as {@link IoPlanChooser.record} takes it. */
export interface PhaseOutcome {
  /** Ranges the phase left uncopied (a trial cut short at its {@link IoPlanChooser.deadline}, a mirror's pass streams stopped at zeros): handed out again. */
  readonly uncopied?: ReadonlyArray<readonly [number, number]>;
  /** Bytes copied as data (not found zero), where holes are scanned rather than copied. */
  readonly dataBytes?: number;
  /** A trial stopped at its {@link IoPlanChooser.deadline} (its copy, or its flush, still running). */
  readonly cut?: boolean;
}

/** What the chooser may pick from. */
export interface IoPlanChooserOptions {
  /** Bytes of the image. */
  readonly size: number;
  /** Read modes allowed, most preferred first (one mode: the read side is fixed). */
  readonly readModes: readonly IoMode[];
  /** Write modes allowed, most preferred first. Ties go to the preferred modes, writes first. */
  readonly writeModes: readonly IoMode[];
  /** Phase and slice boundaries fall on multiples of this (the chunk size). */
  readonly alignment: number;
  /** Bytes of the warm-up before the first trial (default: one chunk). */
  readonly warmupBytes?: number;
}

const keyOf = (plan: IoPlan): string => `${plan.read}/${plan.write}`;

/** `plan` as people say it: "buffered reads, O_DIRECT writes". */
export function describePlan(plan: IoPlan): string {
  const mode = (m: IoMode): string => (m === 'direct' ? 'O_DIRECT' : 'buffered');
  return `${mode(plan.read)} reads, ${mode(plan.write)} writes`;
}

/** Plans phase by phase: call {@link next} for the phase to run and {@link record} once it has run. */
export class IoPlanChooser {
  readonly #o: IoPlanChooserOptions;
  readonly #trialBytes: number;
  readonly #trials: PlanTrial[] = [];
  /** Where the next phase that is not part of a dealt window starts. */
  #cursor = 0;
  /** Phases of the window being dealt, still to run. */
  #queue: CopyPhase[] = [];
  /** Rates measured in the window being dealt, by plan; `thin`: too little data to count (see {@link MIN_TRIAL_DATA_SHARE}). */
  #window = new Map<string, { plan: IoPlan; rate: number; thin: boolean }>();
  /** Latest measured rate of each plan, by plan. */
  readonly #latest = new Map<string, { plan: IoPlan; rate: number; cut?: boolean }>();
  #plan: IoPlan;
  #reason: string;
  #basis: IoPlanChoice['basis'];
  #settled = false;
  /** Which trial window is being run before the first choice. */
  #stage: 'write' | 'read' = 'write';
  #switches = 0;
  /** Full run segments in a row well under the chosen plan's measured rate. */
  #slowSegments = 0;
  #runBytes: number;
  /** Bytes of the next run segment (see {@link SEGMENT_TRIALS}), and the last segment dealt. */
  #segmentBytes: number;
  #segment: CopyPhase | undefined;
  /** The next re-trial starts once the chosen plan has covered this offset. */
  #retryAt = Number.POSITIVE_INFINITY;
  /** Trial windows in a row that held too little data. */
  #thinWindows = 0;
  /** Ranges phases left uncopied, still to copy (with the plan in force, before going on). */
  #leftovers: Array<readonly [number, number]> = [];

  constructor(options: IoPlanChooserOptions) {
    this.#o = options;
    const plans = options.writeModes.flatMap((write) => options.readModes.map((read) => ({ read, write })));
    this.#plan = plans[0]!;
    this.#trialBytes = alignUp(Math.min(MAX_TRIAL_BYTES, Math.max(MIN_TRIAL_BYTES, options.size / 16)), options.alignment);
    this.#runBytes = FIRST_RUN_TRIALS * this.#trialBytes;
    this.#segmentBytes = SEGMENT_TRIALS * this.#trialBytes;
    if (plans.length === 1) {
      this.#basis = 'asked';
      this.#reason = 'asked for';
      this.#settled = true;
    } else if (options.size < MIN_MEASURED_BYTES) {
      // Page-cache I/O starts fastest (no alignment probes, no second handles), and so small a
      // copy cannot crowd the cache.
      const buffered = (modes: readonly IoMode[]): IoMode => (modes.includes('buffered') ? 'buffered' : modes[0]!);
      this.#plan = { read: buffered(options.readModes), write: buffered(options.writeModes) };
      this.#basis = 'fixed';
      this.#reason = `not measured: a copy under ${MIN_MEASURED_BYTES >> 20} MiB ends before trials could tell the plans apart`;
      this.#settled = true;
    } else {
      this.#basis = 'measured';
      this.#reason = 'measuring';
      const warmup = this.#end(0, options.warmupBytes ?? options.alignment);
      this.#queue.push({ ranges: [[0, warmup]], plan: plans[0]!, trial: false, warmup: true });
      this.#cursor = warmup;
      const read = options.readModes[0]!;
      const dealt = options.writeModes.length > 1 ? this.#deal(options.writeModes.map((write) => ({ read, write }))) : this.#dealReadTrial(this.#plan);
      if (!dealt) {
        this.#queue = [];
        this.#cursor = 0;
        this.#basis = 'fixed';
        this.#reason =
          options.writeModes.length > 1
            ? 'not measured: chunks this large leave too few slices for a fair trial'
            : `not measured: only the read mode is open, and a copy under ${MIN_READ_TRIAL_BYTES >> 30} GiB keeps the preferred one`;
        this.#settled = true;
      }
    }
  }

  /** The plan in force. */
  get plan(): IoPlan {
    return this.#plan;
  }

  /** Bytes each plan copies in a trial. */
  get trialBytes(): number {
    return this.#trialBytes;
  }

  get choice(): IoPlanChoice {
    return { plan: this.#plan, basis: this.#basis, reason: this.#reason, trials: [...this.#trials], switches: this.#switches };
  }

  /** The next phase to run (undefined once the image is covered). */
  next(): CopyPhase | undefined {
    const queued = this.#queue[0];
    if (queued) return queued;
    if (this.#leftovers.length > 0) {
      const phase: CopyPhase = { ranges: this.#leftovers, plan: this.#plan, trial: false };
      this.#leftovers = [];
      this.#queue.push(phase);
      return phase;
    }
    const { size } = this.#o;
    if (this.#cursor >= size) return undefined;
    if (this.#settled && this.#cursor >= this.#retryAt) {
      const runnerUp = this.#runnerUp();
      if (runnerUp && this.#deal([this.#plan, runnerUp])) return this.#queue[0];
      this.#retryAt = Number.POSITIVE_INFINITY; // nothing worth trying, or too little left to try it on
    }
    // The chosen plan runs in measured segments, so a plan that slows down as the copy goes on
    // (page-cache writes once the cache is large) is caught.
    const end =
      this.#basis === 'measured'
        ? this.#end(this.#cursor, Math.max(this.#o.alignment, Math.min(this.#segmentBytes, this.#retryAt - this.#cursor)))
        : size;
    const phase: CopyPhase = { ranges: [[this.#cursor, end]], plan: this.#plan, trial: false };
    this.#queue.push(phase);
    this.#segment = phase;
    return phase;
  }

  /**
   * Seconds after which the trial `phase` has lost, so the copy may cut it short: the time the
   * window's fastest plan so far took for as many bytes. Only a window's first plan has none, and
   * it is the one a later plan must beat by {@link SWITCH_MARGIN}, so a trial still running then
   * cannot win. (A page-cache trial on this VM once took 1.1 s for what O_DIRECT wrote in 0.2 s.)
   */
  deadline(phase: CopyPhase): number | undefined {
    if (!phase.trial || this.#window.size === 0) return undefined;
    const fastest = Math.max(...[...this.#window.values()].map((m) => m.rate));
    return bytesOf(phase) / fastest;
  }

  /**
   * Records how long the phase {@link next} returned took, its flush included, and what it did
   * (see {@link PhaseOutcome}). A trial cut short is rated on what it did copy, and the chooser
   * hands the rest out again.
   */
  record(phase: CopyPhase, seconds: number, { uncopied = [], dataBytes, cut = false }: PhaseOutcome = {}): void {
    if (this.#queue[0] === phase) this.#queue.shift();
    this.#leftovers.push(...uncopied);
    const bytes = bytesOf(phase) - uncopied.reduce((n, [s, e]) => n + e - s, 0);
    const rate = bytes / Math.max(seconds, 1e-6);
    const thin = dataBytes !== undefined && dataBytes < MIN_TRIAL_DATA_SHARE * bytes;
    if (!phase.trial) {
      if (phase.warmup) return;
      this.#cursor = Math.max(this.#cursor, phase.ranges.at(-1)![1]);
      if (phase === this.#segment) this.#segmentBytes = thin ? 2 * this.#segmentBytes : SEGMENT_TRIALS * this.#trialBytes;
      // The chosen plan slowed to well under its own measured rate for SLOW_SEGMENTS full segments
      // in a row, and the runner-up was faster than that: try the runner-up now, not at the next
      // re-trial (page-cache writes that slow down as the cache grows). One slow segment is not
      // enough, segments differ in content (holes read faster than data), unless it is at under
      // half the rate: page-cache writes that won a trial here by 11 % then ran a GiB at a quarter.
      if (!this.#settled || bytes < SEGMENT_TRIALS * this.#trialBytes) return;
      const own = this.#latest.get(keyOf(this.#plan))?.rate ?? 0;
      this.#slowSegments = rate * HOPELESS_FACTOR < own ? SLOW_SEGMENTS : rate * SLOWDOWN_FACTOR < own ? this.#slowSegments + 1 : 0;
      const runnerUp = this.#runnerUp();
      if (this.#slowSegments >= SLOW_SEGMENTS && runnerUp && rate * SWITCH_MARGIN < this.#latest.get(keyOf(runnerUp))!.rate) {
        this.#slowSegments = 0;
        this.#retryAt = this.#cursor;
      }
      return;
    }
    this.#window.set(keyOf(phase.plan), { plan: phase.plan, rate, thin });
    if (!thin) {
      this.#trials.push({ plan: phase.plan, bytes, seconds, rate, ...(cut ? { cut } : {}) });
      this.#latest.set(keyOf(phase.plan), { plan: phase.plan, rate, cut });
    }
    if (this.#queue.some((p) => p.trial)) return;
    if (![...this.#window.values()].some((m) => m.thin)) {
      this.#thinWindows = 0;
      this.#decide();
    } else if (++this.#thinWindows > MAX_THIN_WINDOWS || !this.#deal([...this.#window.values()].map((m) => m.plan))) {
      this.#thinWindows = 0;
      // A re-trial that found no data: the plan in force goes on, twice as long as before (as
      // after a runner-up that lost), or a mostly-hole image is half trial windows of holes.
      if (this.#settled) this.#retryAt = this.#cursor + (this.#runBytes *= 2);
      else if (this.#trials.length > 0) this.#settle('; the read modes not compared: their trial windows held too little data');
      else {
        this.#settled = true;
        this.#basis = 'fixed';
        this.#reason = 'not measured: the trial windows held too little data to tell the plans apart (the source is mostly holes, which every plan scans alike)';
      }
    }
  }

  /** Deals the window at the cursor to `plans` in slices; false when too little of the image is left for a fair deal. */
  #deal(plans: readonly IoPlan[]): boolean {
    // Each plan gets at least two slices, so no plan's share is one stretch of the image.
    const slice = Math.max(this.#o.alignment, Math.min(alignUp(Math.max(SLICE_CHUNKS * this.#o.alignment, MIN_SLICE_BYTES), this.#o.alignment), alignDown(this.#trialBytes / 2, this.#o.alignment)));
    const windowBytes = plans.length * this.#trialBytes;
    const start = this.#cursor;
    const end = this.#end(start, windowBytes);
    if (end - start < plans.length * slice) return false;
    const ranges: Array<Array<[number, number]>> = plans.map(() => []);
    for (let at = start, i = 0; at < end; at += slice, i++) ranges[i % plans.length]!.push([at, Math.min(end, at + slice)]);
    this.#window = new Map();
    plans.forEach((plan, i) => this.#queue.push({ ranges: ranges[i]!, plan, trial: true }));
    this.#cursor = end;
    return true;
  }

  /** Deals the other read modes against `winner`, if the copy is large enough and there are any. */
  #dealReadTrial(winner: IoPlan): boolean {
    const others = this.#o.readModes.filter((r) => r !== winner.read).map((read) => ({ read, write: winner.write }));
    if (others.length === 0 || this.#o.size < MIN_READ_TRIAL_BYTES || !this.#deal([winner, ...others])) return false;
    this.#stage = 'read';
    return true;
  }

  /** After a window: the next trial window, the first choice, or a re-trial's verdict. */
  #decide(): void {
    const ranked = this.#rank([...this.#window.values()]);
    const winner = ranked[0]!;
    if (!this.#settled) {
      this.#plan = winner.plan;
      if (this.#stage === 'write' && this.#dealReadTrial(winner.plan)) return;
      this.#settle();
      return;
    }
    const current = this.#window.get(keyOf(this.#plan))!;
    if (keyOf(winner.plan) !== keyOf(this.#plan) && winner.rate > current.rate * SWITCH_MARGIN) {
      this.#reason = `switched from ${describePlan(this.#plan)}: ${rateText(winner.rate)} against ${rateText(current.rate)} in a re-trial`;
      this.#plan = winner.plan;
      this.#switches++;
      this.#runBytes = FIRST_RUN_TRIALS * this.#trialBytes;
    } else {
      this.#runBytes *= 2;
    }
    this.#retryAt = this.#cursor + this.#runBytes;
  }

  /** Settles on the plan in force, saying the rates measured. */
  #settle(note = ''): void {
    this.#settled = true;
    const own = this.#latest.get(keyOf(this.#plan))!;
    const others = this.#rank([...this.#latest.values()]).filter((o) => keyOf(o.plan) !== keyOf(this.#plan));
    const against = others.map((o) => `${o.cut ? 'under ' : ''}${rateText(o.rate)} with ${describePlan(o.plan)}${o.cut ? ' (cut short)' : ''}`);
    this.#reason = `measured: ${rateText(own.rate)}${against.length ? `, against ${against.join(', ')}` : ''}${note}`;
    this.#retryAt = this.#cursor + this.#runBytes;
  }

  /** Fastest first; a plan within the margin of a faster one ranks by preference instead. */
  #rank<T extends { plan: IoPlan; rate: number }>(measured: T[]): T[] {
    const top = Math.max(...measured.map((m) => m.rate));
    const tier = (m: { rate: number }): number => (m.rate * SWITCH_MARGIN >= top ? 0 : 1);
    return measured.sort((a, b) => tier(a) - tier(b) || (tier(a) === 0 ? this.#preference(a.plan) - this.#preference(b.plan) : b.rate - a.rate));
  }

  #preference(plan: IoPlan): number {
    return this.#o.writeModes.indexOf(plan.write) * 10 + this.#o.readModes.indexOf(plan.read);
  }

  /** The fastest plan measured other than the one in force, unless it is hopelessly slower. */
  #runnerUp(): IoPlan | undefined {
    const current = this.#latest.get(keyOf(this.#plan))?.rate ?? 0;
    const others = [...this.#latest.values()]
      .filter((b) => keyOf(b.plan) !== keyOf(this.#plan) && b.rate * HOPELESS_FACTOR >= current)
      .sort((a, b) => b.rate - a.rate);
    return others[0]?.plan;
  }

  #end(start: number, length: number): number {
    return Math.min(this.#o.size, alignUp(start + length, this.#o.alignment));
  }
}

function bytesOf(phase: CopyPhase): number {
  return phase.ranges.reduce((n, [start, end]) => n + end - start, 0);
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

function alignDown(n: number, alignment: number): number {
  return Math.floor(n / alignment) * alignment;
}

function rateText(bytesPerSecond: number): string {
  return `${(bytesPerSecond / 1e9).toFixed(2)} GB/s`;
}

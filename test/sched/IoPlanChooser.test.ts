import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FIRST_RUN_TRIALS, IoPlanChooser, MIN_MEASURED_BYTES, MIN_TRIAL_DATA_SHARE, MIN_READ_TRIAL_BYTES, SEGMENT_TRIALS, SLICE_CHUNKS, type CopyPhase, type IoMode, type IoPlan } from '../../src/sched/IoPlanChooser.js';
import { fuzzParams } from '../helpers/fuzz.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const BOTH: readonly IoMode[] = ['buffered', 'direct'];
const DIRECT_FIRST: readonly IoMode[] = ['direct', 'buffered'];

const key = (p: IoPlan): string => `${p.read}/${p.write}`;
const bytesOf = (p: CopyPhase): number => p.ranges.reduce((n, [s, e]) => n + e - s, 0);
const kind = (p: CopyPhase): string => (p.warmup ? 'warmup' : p.trial ? 'trial' : 'run');

/**
 * Runs a chooser to the end on a simulated disk: `secondsOf` says how long a plan takes over one
 * range (so a test can make holes fast and data slow, or the disk change mid-copy).
 */
function simulate(chooser: IoPlanChooser, secondsOf: (plan: IoPlan, start: number, end: number) => number): CopyPhase[] {
  const phases: CopyPhase[] = [];
  for (let p = chooser.next(); p; p = chooser.next()) {
    phases.push(p);
    chooser.record(p, p.ranges.reduce((t, [s, e]) => t + secondsOf(p.plan, s, e), 0));
    expect(phases.length).toBeLessThan(10_000);
  }
  return phases;
}

/**
 * As {@link simulate}, but a phase still running at its deadline is cut there, as BulkCopy cuts
 * it: what it would have copied by then is done, the rest of its ranges is reported uncopied.
 * `dataOf`, if given, says how many bytes of a range are data (the rest holes).
 */
function simulateCutting(
  chooser: IoPlanChooser,
  secondsOf: (plan: IoPlan, start: number, end: number) => number,
  dataOf?: (start: number, end: number) => number,
): Array<{ phase: CopyPhase; uncopied: Array<[number, number]> }> {
  const log: Array<{ phase: CopyPhase; uncopied: Array<[number, number]> }> = [];
  for (let p = chooser.next(); p; p = chooser.next()) {
    const deadline = chooser.deadline(p) ?? Number.POSITIVE_INFINITY;
    let t = 0;
    let data = 0;
    const uncopied: Array<[number, number]> = [];
    for (const [s, e] of p.ranges) {
      const need = secondsOf(p.plan, s, e);
      if (t >= deadline) uncopied.push([s, e]);
      else if (t + need <= deadline) [t, data] = [t + need, data + (dataOf?.(s, e) ?? 0)];
      else {
        const cutAt = Math.min(e, s + Math.ceil(((deadline - t) / need) * (e - s)));
        if (cutAt < e) uncopied.push([cutAt, e]);
        [t, data] = [deadline, data + (dataOf?.(s, cutAt) ?? 0)];
      }
    }
    log.push({ phase: p, uncopied });
    chooser.record(p, t, { uncopied, cut: uncopied.length > 0, ...(dataOf ? { dataBytes: data } : {}) });
    expect(log.length).toBeLessThan(10_000);
  }
  return log;
}

/** A disk where each plan moves bytes at a fixed rate. */
const rates = (r: Record<string, number>) => (plan: IoPlan, s: number, e: number) => (e - s) / (r[key(plan)] ?? 1e8);

describe('IoPlanChooser', () => {
  it('does not measure a copy too small to tell plans apart, and uses the page cache for it', () => {
    const chooser = new IoPlanChooser({ size: MIN_MEASURED_BYTES - MiB, readModes: BOTH, writeModes: DIRECT_FIRST, alignment: MiB });
    const phases = simulate(chooser, () => 1);
    expect(phases).toEqual([{ ranges: [[0, MIN_MEASURED_BYTES - MiB]], plan: { read: 'buffered', write: 'buffered' }, trial: false }]);
    expect(chooser.choice).toMatchObject({ basis: 'fixed', trials: [] });
  });

  it('runs the one plan it is given without trials, and says it was asked for', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: ['direct'], writeModes: ['direct'], alignment: MiB });
    expect(simulate(chooser, () => 1)).toHaveLength(1);
    expect(chooser.choice).toMatchObject({ basis: 'asked', plan: { read: 'direct', write: 'direct' } });
  });

  it('warms up, tries the write modes, then the other read mode against the winner, each window dealt in equal interleaved slices', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: BOTH, writeModes: DIRECT_FIRST, alignment: MiB, warmupBytes: 16 * MiB });
    const phases = simulate(chooser, rates({ 'buffered/direct': 2e9, 'buffered/buffered': 1e9, 'direct/direct': 1e9 }));
    expect(phases.slice(0, 5).map((p) => `${kind(p)} ${key(p.plan)}`)).toEqual([
      'warmup buffered/direct',
      'trial buffered/direct',
      'trial buffered/buffered',
      'trial buffered/direct',
      'trial direct/direct',
    ]);
    expect(bytesOf(phases[0]!)).toBe(16 * MiB);
    const window = phases.slice(1, 3);
    expect(bytesOf(window[0]!)).toBe(bytesOf(window[1]!));
    // Slice i of the window goes to plan i mod 2.
    const slice = SLICE_CHUNKS * MiB;
    window.forEach((t, i) => t.ranges.forEach(([s, e], j) => expect([s, e]).toEqual([16 * MiB + (2 * j + i) * slice, 16 * MiB + (2 * j + i + 1) * slice])));
  });

  it('keeps the preferred read mode on a copy too small for a second trial window', () => {
    const chooser = new IoPlanChooser({ size: MIN_READ_TRIAL_BYTES - MiB, readModes: BOTH, writeModes: DIRECT_FIRST, alignment: MiB });
    const phases = simulate(chooser, rates({ 'direct/direct': 9e9, 'buffered/direct': 1e9, 'buffered/buffered': 1e9 }));
    expect(phases.filter((p) => p.trial).every((p) => p.plan.read === 'buffered')).toBe(true);
    expect(chooser.choice.plan.read).toBe('buffered');
  });

  it('copies the rest with the fastest plan measured, and says the rates', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: BOTH, writeModes: DIRECT_FIRST, alignment: MiB });
    const phases = simulate(chooser, rates({ 'buffered/direct': 1e9, 'buffered/buffered': 3e9, 'direct/buffered': 2e9 }));
    expect(chooser.choice.plan).toEqual({ read: 'buffered', write: 'buffered' });
    expect(chooser.choice.basis).toBe('measured');
    expect(chooser.choice.reason).toMatch(/^measured: 3\.00 GB\/s, against /);
    const run = phases.filter((p) => kind(p) === 'run' && key(p.plan) === 'buffered/buffered').reduce((n, p) => n + bytesOf(p), 0);
    expect(run).toBeGreaterThan(2.5 * GiB);
  });

  it('judges plans on the same mix of data and holes, however the data lies', () => {
    // Holes read 10× faster than data, and the data is one run at the start of the window: a plan
    // given a range of its own would look fast or slow by where its range fell.
    const dataEnd = 40 * MiB;
    const disk = (plan: IoPlan, s: number, e: number): number => {
      const data = Math.max(0, Math.min(e, dataEnd) - s);
      const speed = plan.write === 'direct' ? 1.5 : 1; // O_DIRECT writes are truly faster here
      return (data / 1e9 + (e - s - data) / 1e10) / speed;
    };
    const chooser = new IoPlanChooser({ size: 8 * GiB, readModes: ['buffered'], writeModes: ['buffered', 'direct'], alignment: MiB, warmupBytes: MiB });
    simulate(chooser, disk);
    expect(chooser.choice.plan.write).toBe('direct');
  });

  it('gives a tie to the preferred modes (O_DIRECT writes keep the page cache small)', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: BOTH, writeModes: DIRECT_FIRST, alignment: MiB });
    simulate(chooser, (p, s, e) => (e - s) / (p.write === 'buffered' ? 1.05e9 : 1e9));
    expect(chooser.choice.plan.write).toBe('direct');
  });

  it('tries the runner-up again after a run, and switches to it when it has become clearly faster', () => {
    const chooser = new IoPlanChooser({ size: 16 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    // The disk changes under the copy: after the first GiB, page-cache writes become 2.5× as fast.
    simulate(chooser, (p, s, e) => (e - s) / (p.write === 'direct' ? 1e9 : s < GiB ? 0.8e9 : 2e9));
    expect(chooser.choice.plan.write).toBe('buffered');
    expect(chooser.choice.switches).toBe(1);
    expect(chooser.choice.reason).toMatch(/^switched from buffered reads, O_DIRECT writes/);
  });

  it('tries the runner-up again at once when the chosen plan slows down in the run', () => {
    const chooser = new IoPlanChooser({ size: 16 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    // Page-cache writes win the trial, then slow to a third once the cache has grown past six trial lengths.
    const phases = simulate(chooser, (p, s, e) => (e - s) / (p.write === 'direct' ? 1e9 : s < 6 * chooser.trialBytes ? 1.5e9 : 0.5e9));
    expect(chooser.choice.switches).toBe(1);
    expect(chooser.choice.plan.write).toBe('direct');
    const switchedAt = phases.find((p, i) => i > 2 && !p.trial && p.plan.write === 'direct')!.ranges[0]![0];
    // Before the periodic re-trial, which comes FIRST_RUN_TRIALS trial lengths after the first window.
    expect(switchedAt).toBeLessThan((2 + FIRST_RUN_TRIALS) * chooser.trialBytes);
  });

  it('tries the runner-up again after one segment at under half the rate of the chosen plan, but not after one merely slow', () => {
    const switchAfter = (slowRate: number): number => {
      const chooser = new IoPlanChooser({ size: 16 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
      // Page-cache writes win the trial at 1.5 GB/s, then run at `slowRate` from eight trial lengths on.
      const at = 8 * chooser.trialBytes;
      const phases = simulate(chooser, (p, s, e) => (e - s) / (p.write === 'direct' ? 1e9 : s < at ? 1.5e9 : slowRate));
      const retrial = phases.findIndex((p, i) => i > 3 && p.trial);
      return (phases[retrial]!.ranges[0]![0] - at) / (SEGMENT_TRIALS * chooser.trialBytes);
    };
    // Segments after the slowdown before the re-trial (the first may straddle it, partly fast).
    expect(switchAfter(0.6e9)).toBeLessThan(2); // under half: the first slow segment brings it on
    expect(switchAfter(0.9e9)).toBeGreaterThanOrEqual(2); // slow, not that slow: two full segments first
  });

  it('waits twice as long before each new re-trial of a runner-up that keeps losing', () => {
    const chooser = new IoPlanChooser({ size: 256 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    const phases = simulate(chooser, rates({ 'buffered/direct': 1.5e9, 'buffered/buffered': 1e9 }));
    const retrialStarts = phases.filter((p, i) => p.trial && i > 2 && key(p.plan) === 'buffered/direct').map((p) => p.ranges[0]![0]);
    const gaps = retrialStarts.slice(1).map((s, i) => s - retrialStarts[i]!);
    expect(gaps.length).toBeGreaterThan(2);
    for (let i = 1; i < gaps.length; i++) expect(gaps[i]! - 2 * chooser.trialBytes).toBe(2 * (gaps[i - 1]! - 2 * chooser.trialBytes));
    expect(gaps[0]! - 2 * chooser.trialBytes).toBe(2 * FIRST_RUN_TRIALS * chooser.trialBytes);
    expect(chooser.choice.switches).toBe(0);
  });

  it('never tries again a runner-up more than twice as slow', () => {
    const chooser = new IoPlanChooser({ size: 64 * GiB, readModes: BOTH, writeModes: ['direct'], alignment: MiB });
    const phases = simulate(chooser, rates({ 'direct/direct': 9e9, 'buffered/direct': 1.4e9 }));
    expect(phases.filter((p) => p.trial)).toHaveLength(2);
  });

  it('gives a trial no deadline until its window has measured a plan, then the time that plan took for as many bytes', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    const warmup = chooser.next()!;
    expect(chooser.deadline(warmup)).toBeUndefined();
    chooser.record(warmup, 0.01);
    const first = chooser.next()!;
    expect(chooser.deadline(first)).toBeUndefined();
    chooser.record(first, bytesOf(first) / 2e9);
    const second = chooser.next()!;
    expect(second.trial).toBe(true);
    expect(chooser.deadline(second)).toBeCloseTo(bytesOf(second) / 2e9, 9);
  });

  it('cuts a losing trial short and copies what it left with the winner, rating it on what it did copy', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    // Page-cache writes take five times as long: cut at a fifth of their share.
    const log = simulateCutting(chooser, rates({ 'buffered/direct': 2e9, 'buffered/buffered': 0.4e9 }));
    const cut = log.find((l) => l.phase.trial && l.phase.plan.write === 'buffered')!;
    const left = cut.uncopied.reduce((n, [s, e]) => n + e - s, 0);
    expect(left / bytesOf(cut.phase)).toBeCloseTo(0.8, 1);
    const trial = chooser.choice.trials.find((t) => t.plan.write === 'buffered')!;
    expect(trial.bytes).toBe(bytesOf(cut.phase) - left);
    expect(trial).toMatchObject({ cut: true });
    expect(trial.rate).toBeCloseTo(0.4e9, -7);
    expect(chooser.choice.reason).toMatch(/against under 0\.40 GB\/s with buffered reads, buffered writes \(cut short\)/);
    // The next phase copies exactly what the cut trial left, with the winner.
    const next = log[log.indexOf(cut) + 1]!.phase;
    expect(next).toMatchObject({ trial: false, plan: { write: 'direct' } });
    expect(next.ranges).toEqual(cut.uncopied);
  });

  it('deals a trial window again, further on, when it held too little data to tell the plans apart', () => {
    const chooser = new IoPlanChooser({ size: 16 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    // Data only from 2 GiB on; before that every plan scans holes alike, and here page-cache
    // writes would look faster on holes.
    const dataOf = (s: number, e: number): number => Math.max(0, e - Math.max(s, 2 * GiB));
    const log = simulateCutting(chooser, (p, s, e) => (dataOf(s, e) > 0 ? (e - s) / (p.write === 'direct' ? 2e9 : 1e9) : (e - s) / (p.write === 'direct' ? 20e9 : 30e9)), dataOf);
    const trials = log.filter((l) => l.phase.trial);
    expect(trials.length).toBeGreaterThan(2);
    expect(chooser.choice.trials.every((t) => t.rate < 3e9)).toBe(true); // only the window with data counted
    expect(chooser.choice.plan.write).toBe('direct');
  });

  it('keeps what the write trial measured when the read trial windows hold too little data', () => {
    const chooser = new IoPlanChooser({ size: 64 * GiB, readModes: BOTH, writeModes: DIRECT_FIRST, alignment: MiB });
    // Data only in the first 200 MiB: the write window has it, every read window after it falls on holes.
    const dataOf = (s: number, e: number): number => Math.max(0, Math.min(e, 200 * MiB) - s);
    simulateCutting(chooser, rates({ 'buffered/direct': 2e9, 'buffered/buffered': 1e9, 'direct/direct': 1e9 }), dataOf);
    expect(chooser.choice).toMatchObject({ basis: 'measured', plan: { read: 'buffered', write: 'direct' } });
    expect(chooser.choice.reason).toMatch(/^measured: 2\.00 GB\/s, against .*; the read modes not compared/);
  });

  it('settles without measuring when no trial window held enough data', () => {
    const chooser = new IoPlanChooser({ size: 4 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    simulateCutting(chooser, rates({}), () => 0);
    expect(chooser.choice).toMatchObject({ basis: 'fixed', plan: { write: 'direct' }, trials: [] });
    expect(chooser.choice.reason).toMatch(/too little data/);
  });

  it('doubles each run segment after one that held too little data, and goes back to the first length after one with data', () => {
    const chooser = new IoPlanChooser({ size: 256 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    // Data in the first GiB (the trials) and from 100 to 164 GiB.
    const dataOf = (s: number, e: number): number => Math.max(0, Math.min(e, GiB) - s) + Math.max(0, Math.min(e, 164 * GiB) - Math.max(s, 100 * GiB));
    const thin = ([s, e]: readonly [number, number]): boolean => dataOf(s, e) < MIN_TRIAL_DATA_SHARE * (e - s);
    const log = simulateCutting(chooser, rates({ 'buffered/direct': 2e9, 'buffered/buffered': 1e9 }), dataOf);
    const first = SEGMENT_TRIALS * chooser.trialBytes;
    const runs = log.filter((l) => kind(l.phase) === 'run' && l.phase.ranges.length === 1).map((l) => l.phase.ranges[0]!);
    const length = (i: number): number => runs[i]![1] - runs[i]![0];
    const follows = (i: number): boolean => runs[i]![0] === runs[i - 1]![1]; // no trial window between
    expect(Math.max(...runs.map((_, i) => length(i)))).toBeGreaterThan(8 * first);
    let grew = 0;
    let reset = 0;
    for (let i = 1; i < runs.length; i++) {
      if (!follows(i)) continue;
      // Segments are also cut short where a re-trial is due, hence "at most".
      if (thin(runs[i - 1]!)) grew += length(i) === 2 * length(i - 1) ? 1 : 0;
      else {
        expect(length(i)).toBeLessThanOrEqual(first);
        reset++;
      }
    }
    expect(grew).toBeGreaterThan(3);
    expect(reset).toBeGreaterThan(3);
  });

  it('waits twice as long before each re-trial after one whose windows held too little data', () => {
    const chooser = new IoPlanChooser({ size: 1024 * GiB, readModes: ['buffered'], writeModes: DIRECT_FIRST, alignment: MiB });
    // Data only in the first trial window: every re-trial falls on holes.
    const dataOf = (s: number, e: number): number => Math.max(0, Math.min(e, 300 * MiB) - s);
    const log = simulateCutting(chooser, rates({ 'buffered/direct': 2e9, 'buffered/buffered': 1e9 }), dataOf);
    const starts: number[] = [];
    log.forEach((l, i) => {
      if (l.phase.trial && i > 0 && !log[i - 1]!.phase.trial) starts.push(l.phase.ranges[0]![0]);
    });
    const gaps = starts.slice(2).map((s, i) => s - starts[i + 1]!);
    expect(gaps.length).toBeGreaterThan(2);
    for (let i = 1; i < gaps.length; i++) expect(gaps[i]!).toBeGreaterThan(1.5 * gaps[i - 1]!);
  });

  it('plans phases that cover the image exactly once, on chunk boundaries, whatever the rates, cuts and holes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 40 }),
        fc.constantFrom(4096, MiB, 8 * MiB),
        fc.array(fc.double({ min: 1e6, max: 1e11, noNaN: true }), { minLength: 4, maxLength: 4 }),
        fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: undefined }),
        (size, alignment, r, dataShare) => {
          const chooser = new IoPlanChooser({ size, readModes: BOTH, writeModes: DIRECT_FIRST, alignment, warmupBytes: 16 * alignment });
          const plans = ['buffered/direct', 'direct/direct', 'buffered/buffered', 'direct/buffered'];
          const log = simulateCutting(
            chooser,
            (plan, s, e) => (e - s) / r[plans.indexOf(key(plan))]!,
            dataShare === undefined ? undefined : (s, e) => Math.floor((e - s) * dataShare),
          );
          const covered: Array<[number, number]> = [];
          for (const { phase, uncopied } of log) {
            for (const [s, e] of phase.ranges) {
              expect(e).toBeGreaterThan(s);
              if (e !== size) expect(e % alignment).toBe(0);
            }
            covered.push(...subtract(phase.ranges, uncopied));
          }
          covered.sort((a, b) => a[0] - b[0]);
          let at = 0;
          for (const [s, e] of covered) {
            expect(s).toBe(at);
            at = e;
          }
          expect(at).toBe(size);
        },
      ),
      fuzzParams(),
    );
  });

});

/** `ranges` less `holes` (each hole lies inside one range, as a cut trial's uncopied ranges do). */
function subtract(ranges: ReadonlyArray<readonly [number, number]>, holes: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [s, e] of ranges) {
    let at = s;
    for (const [hs, he] of holes.filter(([hs, he]) => hs >= s && he <= e).sort((a, b) => a[0] - b[0])) {
      if (hs > at) out.push([at, hs]);
      at = Math.max(at, he);
    }
    if (at < e) out.push([at, e]);
  }
  return out;
}

import { describe, expect, it, vi } from 'vitest';
import type { TuningDecision } from '../../src/sched/ChunkTuner.js';
import {
  MirrorController,
  type ControlledJob,
  type ConvergenceEvent,
  type NoConvergencePolicy,
  type ReadyLostEvent,
} from '../../src/job/MirrorController.js';
import type { MirrorCopier } from '../../src/job/MirrorCopier.js';
import { WriterGate } from '../../src/job/WriterGate.js';

const MiB = 1 << 20;

/** A job driven by numbers: the test sets its backlog and copied bytes per tick. */
class FakeJob implements ControlledJob {
  status = 'running';
  copyMode: 'background' | 'write-blocking' = 'background';
  backlogBytes = 0;
  copiedBytes = 0;
  readonly tunings: TuningDecision[] = [];
  readonly convergence: ConvergenceEvent[] = [];
  readonly readyLost: ReadyLostEvent[] = [];
  backlog() {
    return { backlogBytes: this.backlogBytes, copiedBytes: this.copiedBytes };
  }
  onTuning(d: TuningDecision): void {
    this.tunings.push(d);
  }
  onConvergence(e: ConvergenceEvent): void {
    this.convergence.push(e);
  }
  async switchToWriteBlocking(): Promise<void> {
    this.copyMode = 'write-blocking';
  }
  dropReady(e: ReadyLostEvent): void {
    this.status = 'running';
    this.readyLost.push(e);
  }
}

function fakeCopier() {
  const options = { chunkSize: MiB, queueDepth: 16, batchExtents: 4 };
  const firstPassEnds: string[] = [];
  const copier = {
    scheduler: { options, takeRateLimited: () => false, takeDispatched: () => ({ extents: 0, bytes: 0 }) },
    setPace: () => {},
    limitedByUser: false,
    firstPassRunning: false,
    firstPassEnds,
    endFirstPass: (reason: string) => void firstPassEnds.push(reason),
  };
  return copier as unknown as MirrorCopier & { scheduler: { options: typeof options }; firstPassEnds: string[]; firstPassRunning: boolean };
}

/** A controller over `job`; `latencyTargetMs` defaults to 5, and `undefined` given means "measure it". */
function controller(job: FakeJob, policy: NoConvergencePolicy = 'report', extra: { latencyTargetMs?: number; copier?: ReturnType<typeof fakeCopier> } = {}) {
  const gate = WriterGate.create();
  const copier = extra.copier ?? fakeCopier();
  const c = new MirrorController(job, {
    copier,
    gate,
    workers: 2,
    limits: { minChunk: 64 * 1024, maxChunk: 8 * MiB, maxInFlight: 16 * MiB, maxQueueDepth: 32 },
    initial: { chunkSize: MiB, inFlight: 16 * MiB },
    adaptive: true,
    latencyTargetMs: 'latencyTargetMs' in extra ? extra.latencyTargetMs : 5,
    onNoConvergence: policy,
    readyBacklogSeconds: 1,
  });
  return { c, gate, copier };
}

/** Ticks `seconds` of 100 ms windows; each, the writer dirties `dirty` and the copier copies `clean` bytes a second. */
function drive(c: MirrorController, job: FakeJob, from: number, seconds: number, dirty: number, clean: number): number {
  let t = from;
  for (; t < from + seconds * 1000; t += 100) {
    const copied = Math.min(job.backlogBytes + dirty / 10, clean / 10);
    job.copiedBytes += copied;
    job.backlogBytes = Math.max(0, job.backlogBytes + dirty / 10 - copied);
    c.tick(t);
  }
  return t;
}

/** A controller that measures its target, and the paces it sets on the copier. */
function measuringController(job: FakeJob) {
  const copier = fakeCopier();
  const paces: Array<number | undefined> = [];
  copier.setPace = (pace: number | undefined) => void paces.push(pace);
  return { ...controller(job, 'report', { latencyTargetMs: undefined, copier }), paces };
}

/** Ticks from `from` up to `to` ms, the application writing 20 times a window at `micros` each. */
function tickWithLatency(c: MirrorController, from: number, to: number, micros: number): number {
  let t = from;
  for (; t <= to; t += 100) {
    for (let i = 0; i < 20; i++) c.appLatency.record(micros);
    c.tick(t);
  }
  return t;
}

describe('MirrorController', () => {
  it('report: says once, with a reason, that the job stopped converging', () => {
    const job = new FakeJob();
    job.backlogBytes = 1024 * MiB;
    const { c } = controller(job, 'report');
    drive(c, job, 0, 6, 300 * MiB, 100 * MiB);
    const reported = job.convergence.filter((e) => e.action === 'reported');
    expect(reported).toHaveLength(1);
    expect(reported[0]!.reason).toMatch(/not converging/);
  });

  it('write-blocking: switches the copy mode when the job stops converging', async () => {
    const job = new FakeJob();
    job.backlogBytes = 1024 * MiB;
    const { c } = controller(job, 'write-blocking');
    drive(c, job, 0, 6, 300 * MiB, 100 * MiB);
    await new Promise((r) => setImmediate(r));
    expect(job.copyMode).toBe('write-blocking');
    expect(job.convergence.some((e) => e.action === 'write-blocking')).toBe(true);
  });

  it('throttle: slows writers step by step while the job does not converge, and eases off once it does', () => {
    const job = new FakeJob();
    job.backlogBytes = 1024 * MiB;
    const { c, gate } = controller(job, 'throttle');
    let t = drive(c, job, 0, 4, 300 * MiB, 100 * MiB);
    const first = gate.throttle;
    expect(first).toBeGreaterThan(0);
    t = drive(c, job, t, 3, 300 * MiB, 100 * MiB);
    const peak = gate.throttle;
    expect(peak).toBeGreaterThan(first);
    drive(c, job, t, 10, 20 * MiB, 300 * MiB); // the throttled writer now dirties little
    expect(gate.throttle).toBeLessThan(peak);
  });

  it('drops a ready job back to running when its backlog needs more than a second of copying', () => {
    const job = new FakeJob();
    const { c } = controller(job);
    job.status = 'ready';
    let t = drive(c, job, 0, 2, 0, 100 * MiB);
    expect(job.readyLost).toHaveLength(0);
    job.backlogBytes = 400 * MiB; // a burst of writes: four seconds at 100 MiB/s
    t = drive(c, job, t, 0.1, 0, 100 * MiB);
    expect(job.status).toBe('running');
    expect(job.readyLost[0]!.backlogBytes).toBeGreaterThan(job.readyLost[0]!.thresholdBytes);
  });

  it('applies each tuning decision to the copier', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, copier } = controller(job);
    drive(c, job, 0, 1, 0, 500 * MiB);
    const last = job.tunings.at(-1)!;
    expect(copier.scheduler.options.chunkSize).toBe(last.chunkSize);
    expect(copier.scheduler.options.queueDepth).toBe(last.queueDepth);
  });

  it('starts at full speed, with the whole initial depth and no pace, when nobody has written yet', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces, copier } = measuringController(job);
    copier.scheduler.options.queueDepth = 1;
    c.start();
    c.stop();
    expect(copier.scheduler.options.queueDepth).toBe(16);
    expect(paces).not.toContain(1 << 20);
  });

  it('copies at full pace while nobody writes, and measures the baseline once the application starts', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces } = measuringController(job);
    for (let t = 0; t <= 1000; t += 100) c.tick(t); // no application writes
    expect(c.latencyTargetMicros).toBeUndefined();
    expect(paces.at(-1)).toBeUndefined(); // the crawl was lifted
    tickWithLatency(c, 1100, 2700, 300); // a second of writing at full speed, then the first probe
    expect(paces).toContain(1 << 20); // crawled while measuring
    expect(c.latencyTargetMicros).toBeGreaterThanOrEqual(600 * 0.98);
    expect(c.latencyTargetMicros).toBeLessThanOrEqual(600 * 1.02);
  });

  it('lets a first pass run while nobody writes, and ends it at the first probe', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, copier } = measuringController(job);
    for (let t = 0; t <= 1000; t += 100) c.tick(t);
    expect(copier.firstPassEnds).toEqual([]);
    tickWithLatency(c, 1100, 2700, 300);
    expect(copier.firstPassEnds[0]).toMatch(/measure the application/);
  });

  it('lets a first pass with under ten seconds of copying left, at its mean rate, finish before its first probe', () => {
    const job = new FakeJob();
    const { c, copier } = measuringController(job);
    copier.firstPassRunning = true;
    let t = 100;
    for (; t <= 2000; t += 100) {
      job.copiedBytes += 1e8; // 1 GB/s, against eight seconds of backlog
      job.backlogBytes = 8e9;
      for (let i = 0; i < 20; i++) c.appLatency.record(300);
      c.tick(t);
    }
    expect(copier.firstPassEnds).toEqual([]);
    job.backlogBytes = 2e10; // twenty seconds left: now the probe is worth it
    tickWithLatency(c, t, t + 200, 300);
    expect(copier.firstPassEnds[0]).toMatch(/measure the application/);
  });

  it('does not probe while the backlog is one a ready job may carry: the job is about to be ready, and a crawl would hold it back', () => {
    const job = new FakeJob();
    const { c, paces } = measuringController(job);
    job.backlogBytes = 4 * MiB;
    const t = tickWithLatency(c, 0, 3000, 300);
    expect(paces).not.toContain(1 << 20);
    expect(c.latencyTargetMicros).toBeUndefined();
    job.backlogBytes = 1e12; // the application outpaces the copy: now it is worth knowing what the copy costs it
    tickWithLatency(c, t, t + 200, 300);
    expect(paces).toContain(1 << 20);
  });

  it('ends a first pass as soon as the application is over a target it was given', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, copier } = controller(job, 'report', { latencyTargetMs: 1 });
    copier.firstPassRunning = true;
    tickWithLatency(c, 0, 300, 500);
    expect(copier.firstPassEnds).toEqual([]);
    tickWithLatency(c, 400, 500, 5000);
    expect(copier.firstPassEnds[0]).toMatch(/over the latency target/);
  });

  it('learns no best rate from a first pass, so its floor after the handover is the copier\'s own', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const copier = fakeCopier();
    const paces: Array<number | undefined> = [];
    copier.setPace = (pace: number | undefined) => void paces.push(pace);
    const { c } = controller(job, 'report', { latencyTargetMs: 1, copier });
    copier.firstPassRunning = true;
    let t = 0;
    for (; t < 1000; t += 100) {
      job.copiedBytes += 2e9; // the pass scanning holes at 20 GB/s
      c.tick(t);
    }
    copier.firstPassRunning = false;
    for (; t < 6000; t += 100) {
      job.copiedBytes += 4e7; // the copier at 400 MB/s, the application over its target
      for (let i = 0; i < 20; i++) c.appLatency.record(5000);
      c.tick(t);
    }
    const last = paces.at(-1);
    expect(last).toBeDefined();
    expect(last!).toBeLessThan(4e8);
  });

  it('without a given target, measures the application p99 before ramping up and aims at twice it', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c } = controller(job, 'report', { latencyTargetMs: undefined });
    tickWithLatency(c, 0, 1600, 200);
    expect(c.latencyTargetMicros).toBeGreaterThanOrEqual(400 * 0.98);
    expect(c.latencyTargetMicros).toBeLessThanOrEqual(400 * 1.02);
  });

  it('measures the target again when the application stays over it with the copy held at its floor', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces } = measuringController(job);
    let t = tickWithLatency(c, 0, 1600, 200); // target: twice 200 µs
    expect(c.latencyTargetMicros).toBeCloseTo(400, -1);
    const before = paces.length;
    // The application slows down on its own: backing the copy off does not help.
    t = tickWithLatency(c, t, 6000, 5000);
    expect(job.tunings.some((d) => d.reason === 'remeasure')).toBe(true);
    expect(paces.slice(before)).toContain(1 << 20); // crawled again to measure
    expect(c.latencyTargetMicros).toBeCloseTo(10_000, -2);
  });

  it('measures only once when the copy at its floor is what keeps the application over the target', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces } = measuringController(job);
    // The application is fast only while the copy crawls (1 MiB/s), as while the target is measured.
    const start = tickWithLatency(c, 0, 1600, 200);
    for (let t = start; t <= 30_000; t += 100) {
      const pace = paces.at(-1);
      for (let i = 0; i < 20; i++) c.appLatency.record(pace !== undefined && pace <= 1 << 20 ? 200 : 1000);
      c.tick(t);
    }
    expect(job.tunings.filter((d) => d.reason === 'remeasure')).toHaveLength(1);
    expect(c.latencyTargetMicros).toBeCloseTo(400, -1);
  });

  it('keeps a target the user gave, even when the copy at its floor cannot meet it', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c } = controller(job, 'report', { latencyTargetMs: 1 });
    tickWithLatency(c, 0, 6000, 5000);
    expect(job.tunings.some((d) => d.reason === 'remeasure')).toBe(false);
    expect(c.latencyTargetMicros).toBe(1000);
  });

  it('measures the target again after switching to write-blocking', async () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c } = controller(job, 'write-blocking', { latencyTargetMs: undefined });
    let t = tickWithLatency(c, 0, 1600, 200);
    expect(job.tunings.some((d) => d.reason === 'remeasure')).toBe(false);
    // A writer that outruns the copier: the policy switches modes.
    for (const end = t + 5000; t < end && job.copyMode === 'background'; t += 100) {
      job.backlogBytes += 100 * MiB;
      job.copiedBytes += 10 * MiB;
      for (let i = 0; i < 20; i++) c.appLatency.record(200);
      c.tick(t);
    }
    expect(job.copyMode).toBe('write-blocking');
    await vi.waitFor(() => expect(job.convergence.some((e) => e.action === 'write-blocking')).toBe(true));
    tickWithLatency(c, t, t + 1200, 1000); // writes to both sides take longer
    expect(job.tunings.some((d) => d.reason === 'remeasure')).toBe(true);
    expect(c.latencyTargetMicros).toBeCloseTo(2000, -2);
  });

  it('after the first probe, goes back to full speed: the target moves, not the copy', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces, copier } = measuringController(job);
    tickWithLatency(c, 0, 1700, 200);
    expect(c.latencyTargetMicros).toBeCloseTo(400, -1);
    expect(paces.at(-1)).toBeUndefined();
    const { chunkSize, queueDepth } = copier.scheduler.options;
    expect(chunkSize * queueDepth).toBe(16 * MiB); // the whole buffer in flight, as before the probe
  });

  it('probes again every 10 s while the application writes, following its unloaded latency as it drifts', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c } = measuringController(job);
    let t = tickWithLatency(c, 0, 5000, 200);
    expect(c.latencyTargetMicros).toBeCloseTo(400, -1);
    t = tickWithLatency(c, t, 9000, 300); // slower, but under the target: nothing to back off from
    expect(c.latencyTargetMicros).toBeCloseTo(400, -1);
    tickWithLatency(c, t, 12_000, 300);
    expect(c.latencyTargetMicros).toBeCloseTo(600, -1);
  });

  it('waits a second of writing before its first probe: a job in sync sooner never crawls', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces } = measuringController(job);
    tickWithLatency(c, 0, 900, 200);
    expect(paces).not.toContain(1 << 20);
    expect(c.latencyTargetMicros).toBeUndefined();
  });

  it('holds the copy back in probes for a few percent of the time under a steady writer', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c, paces } = measuringController(job);
    let crawling = 0;
    let windows = 0;
    for (let t = 0; t <= 60_000; t += 100) {
      for (let i = 0; i < 20; i++) c.appLatency.record(200);
      c.tick(t);
      windows++;
      if (paces.at(-1) === 1 << 20) crawling++;
    }
    expect(crawling / windows).toBeLessThanOrEqual(0.05);
  });

  it('measures the baseline over a median window, so the probe\'s draining start does not raise the target', () => {
    const job = new FakeJob();
    job.backlogBytes = 1e12;
    const { c } = controller(job, 'report', { latencyTargetMs: undefined });
    for (let t = 0; t <= 1600; t += 100) {
      // The probe's first windows are slow (the copies in flight draining), the rest are the writer's own.
      for (let i = 0; i < 20; i++) c.appLatency.record(t > 1000 && t <= 1200 ? 8000 : 200);
      c.tick(t);
    }
    expect(c.latencyTargetMicros).toBeGreaterThanOrEqual(400 * 0.98);
    expect(c.latencyTargetMicros).toBeLessThanOrEqual(400 * 1.02);
  });
});

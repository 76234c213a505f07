import { describe, expect, it } from 'vitest';
import { ChunkTuner, type TunerLimits, type TuningDecision } from '../../src/sched/ChunkTuner.js';
import { NO_LATENCIES, type LatencyStats } from '../../src/sched/LatencyWindow.js';

const KiB = 1024;
const MiB = 1 << 20;
const LIMITS: TunerLimits = { minChunk: 64 * KiB, maxChunk: 8 * MiB, maxInFlight: 16 * MiB, maxQueueDepth: 32 };

/** A simulated disk: throughput peaks at 1 MiB chunks and falls off a tenth per power of two away. */
function throughputAt(chunk: number): number {
  return 1e9 * (1 - 0.1 * Math.abs(Math.log2(chunk / MiB)));
}

/** A simulated application: its write p99 grows with the bytes the copier has in flight. */
function appP99At(inFlight: number): LatencyStats {
  const p99 = 100 + (inFlight / MiB) * 50;
  return { count: 100, p50: p99 / 2, p99, p999: p99, max: p99, mean: p99 / 2 };
}

/** Runs `n` 100 ms windows against the simulation. */
function run(tuner: ChunkTuner, n: number, withApp = false): TuningDecision[] {
  const out: TuningDecision[] = [];
  let inFlight = tuner.chunkSize * tuner.queueDepth;
  for (let i = 0; i < n; i++) {
    const d = tuner.decide({
      seconds: 0.1,
      bytesCopied: throughputAt(tuner.chunkSize) * 0.1,
      backlogBytes: 1e12,
      app: withApp ? appP99At(inFlight) : NO_LATENCIES,
      rateLimited: false,
    });
    inFlight = d.inFlight;
    out.push(d);
  }
  return out;
}

describe('ChunkTuner', () => {
  it('climbs from small chunks to the chunk size with the best throughput', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: 64 * KiB, inFlight: 16 * MiB });
    run(tuner, 80);
    expect(tuner.chunkSize).toBeGreaterThanOrEqual(512 * KiB);
    expect(tuner.chunkSize).toBeLessThanOrEqual(2 * MiB);
  });

  it('comes down from large chunks to the chunk size with the best throughput', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: 8 * MiB, inFlight: 16 * MiB });
    run(tuner, 80);
    expect(tuner.chunkSize).toBeGreaterThanOrEqual(512 * KiB);
    expect(tuner.chunkSize).toBeLessThanOrEqual(2 * MiB);
  });

  it('moves in steps: a chunk at most doubles or halves, bytes in flight change by at most a quarter', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: 64 * KiB, inFlight: 4 * MiB }, 400);
    const ds = run(tuner, 100, true);
    for (let i = 1; i < ds.length; i++) {
      const r = ds[i]!.chunkSize / ds[i - 1]!.chunkSize;
      expect([0.5, 1, 2]).toContain(r);
      expect(ds[i]!.inFlight / ds[i - 1]!.inFlight).toBeLessThanOrEqual(1.26);
      expect(ds[i]!.inFlight / ds[i - 1]!.inFlight).toBeGreaterThanOrEqual(0.5);
    }
  });

  it('backs off bytes in flight until the application p99 is under the target', () => {
    // p99 = 100 µs + 50 µs per MiB in flight: 16 MiB gives 900 µs; the target 400 µs allows 6 MiB.
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: 16 * MiB }, 400);
    const ds = run(tuner, 40, true);
    expect(ds[0]!.reason).toBe('app-latency');
    expect(ds.at(-1)!.inFlight).toBeLessThanOrEqual(6 * MiB);
    expect(appP99At(ds.at(-1)!.inFlight).p99).toBeLessThanOrEqual(400 * 1.1);
  });

  it('paces the copy once one operation in flight is still too much for the application, keeping its chunk size', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: 4 * MiB, inFlight: 4 * MiB }, 50); // below what even 0 bytes give
    const ds = run(tuner, 20, true);
    expect(tuner.chunkSize).toBe(4 * MiB);
    expect(tuner.queueDepth).toBe(1);
    const paces = ds.map((d) => d.pace!).filter(Boolean);
    expect(paces.length).toBeGreaterThan(5);
    for (let i = 1; i < paces.length; i++) expect(paces[i]!).toBeLessThanOrEqual(paces[i - 1]!);
  });

  it('never paces the copy below its floor', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: MiB }, 50);
    run(tuner, 200, true);
    expect(tuner.pace).toBeGreaterThanOrEqual(8 * MiB);
  });

  it('speeds a pace up again once the application has headroom, and lifts it past the best throughput seen', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: MiB }, 300);
    const hurt = { ...appP99At(0), p99: 1000 };
    const calm = { ...appP99At(0), p99: 100 };
    const window = (app: typeof hurt) => ({ seconds: 0.1, bytesCopied: 1e8 * 0.1, backlogBytes: 1e12, app, rateLimited: false });
    for (let i = 0; i < 5; i++) tuner.decide(window(hurt));
    const slowed = tuner.pace!;
    expect(slowed).toBeLessThan(1e8);
    expect(tuner.decide(window(calm)).pace!).toBeGreaterThan(slowed);
    for (let i = 0; i < 20; i++) tuner.decide(window(calm));
    expect(tuner.pace).toBeUndefined();
  });

  it('puts more in flight while the application has headroom', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: MiB }, 10_000);
    const ds = run(tuner, 3, true);
    expect(ds.map((d) => d.reason)).toEqual(['headroom', 'headroom', 'headroom']);
    expect(tuner.queueDepth).toBeGreaterThan(1);
  });

  it('holds still when the speed limit, not the disk, sets the pace', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: 16 * MiB });
    const d = tuner.decide({ seconds: 0.1, bytesCopied: 1e6, backlogBytes: 1e9, app: NO_LATENCIES, rateLimited: true });
    expect(d).toMatchObject({ reason: 'rate-limited', chunkSize: MiB });
  });

  it('holds still when there is nothing to copy', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: 16 * MiB });
    const d = tuner.decide({ seconds: 0.1, bytesCopied: 0, backlogBytes: 0, app: NO_LATENCIES, rateLimited: false });
    expect(d).toMatchObject({ reason: 'idle', chunkSize: MiB });
  });

  it('ignores a p99 from too few application writes', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: MiB, inFlight: 16 * MiB }, 100);
    const few = { ...appP99At(16 * MiB), count: 3 };
    const d = tuner.decide({ seconds: 0.1, bytesCopied: 1e8, backlogBytes: 1e9, app: few, rateLimited: false });
    expect(d.reason).not.toBe('app-latency');
  });

  it('counts the depth in extents when they are smaller than a chunk, so scattered granules keep the bytes in flight', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: 8 * MiB, inFlight: 16 * MiB });
    expect(tuner.queueDepth).toBe(2);
    const d = tuner.decide({ seconds: 0.1, bytesCopied: 1e6, backlogBytes: 1e9, app: NO_LATENCIES, rateLimited: false, meanExtentBytes: 4 * KiB });
    expect(d.queueDepth).toBe(LIMITS.maxQueueDepth);
  });

  it('backs off scattered extents down to one in flight before it paces', () => {
    const tuner = new ChunkTuner(LIMITS, { chunkSize: 8 * MiB, inFlight: 16 * MiB }, 400);
    const slow = appP99At(16 * MiB);
    const window = { seconds: 0.1, bytesCopied: 1e6, backlogBytes: 1e9, app: slow, rateLimited: false, meanExtentBytes: 4 * KiB };
    let d = tuner.decide(window);
    while (d.pace === undefined) d = tuner.decide(window);
    expect(d.inFlight).toBeLessThan(2 * 4 * KiB);
    expect(d.queueDepth).toBe(1);
  });

  /** Runs windows with the application always over its target, at a steady copy rate; returns the slowest pace set. */
  function slowestPaceUnderBusyApp(limits: TunerLimits): number {
    const tuner = new ChunkTuner(limits, { chunkSize: MiB, inFlight: MiB }, 400);
    const busy: LatencyStats = { count: 100, p50: 2000, p99: 5000, p999: 5000, max: 5000, mean: 2000 };
    let slowest = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 100; i++) {
      const d = tuner.decide({ seconds: 0.1, bytesCopied: 1e9 * 0.1, backlogBytes: 1e12, app: busy, rateLimited: false });
      if (d.pace !== undefined) slowest = Math.min(slowest, d.pace);
    }
    return slowest;
  }

  it('keeps half of the best rate measured while the application stays over its target, by default', () => {
    expect(slowestPaceUnderBusyApp(LIMITS)).toBeGreaterThanOrEqual(0.5 * 1e9 * 0.999);
  });

  it('keeps the share of the best rate it is given (minCopyShare) while the application stays over its target', () => {
    const slowest = slowestPaceUnderBusyApp({ ...LIMITS, minCopyShare: 0.2 });
    expect(slowest).toBeGreaterThanOrEqual(0.2 * 1e9 * 0.999);
    expect(slowest).toBeLessThan(0.5 * 1e9);
  });
});

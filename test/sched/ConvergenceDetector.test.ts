import { describe, expect, it } from 'vitest';
import { ConvergenceDetector, type ConvergenceState } from '../../src/sched/ConvergenceDetector.js';

const MiB = 1 << 20;

/** Feeds `seconds` of 100 ms samples: the writer dirties `dirtyPerSec`, the copier cleans `cleanPerSec`. */
function simulate(d: ConvergenceDetector, seconds: number, dirtyPerSec: number, cleanPerSec: number, backlog0: number): ConvergenceState {
  let state!: ConvergenceState;
  let backlog = backlog0;
  let dirtied = backlog0;
  let copied = 0;
  for (let t = 0; t <= seconds * 1000; t += 100) {
    state = d.sample({ nowMs: t, backlogBytes: backlog, dirtiedBytes: dirtied, copiedBytes: copied });
    const clean = Math.min(backlog + dirtyPerSec / 10, cleanPerSec / 10);
    dirtied += dirtyPerSec / 10;
    copied += clean;
    backlog = Math.max(0, backlog + dirtyPerSec / 10 - clean);
  }
  return state;
}

describe('ConvergenceDetector', () => {
  it('flags a writer faster than the copier as not converging, saying why', () => {
    const s = simulate(new ConvergenceDetector(), 5, 200 * MiB, 100 * MiB, 512 * MiB);
    expect(s.converging).toBe(false);
    expect(s.reason).toMatch(/not converging/);
    expect(s.etaSeconds).toBe(Number.POSITIVE_INFINITY);
  });

  it('calls a shrinking backlog converging, with an ETA', () => {
    const s = simulate(new ConvergenceDetector(), 5, 20 * MiB, 150 * MiB, 4096 * MiB);
    expect(s.converging).toBe(true);
    expect(s.etaSeconds).toBeGreaterThan(0);
    expect(s.etaSeconds).toBeLessThan(Number.POSITIVE_INFINITY);
  });

  it('is in sync once the backlog is empty', () => {
    const s = simulate(new ConvergenceDetector(), 5, 10 * MiB, 500 * MiB, 64 * MiB);
    expect(s).toMatchObject({ converging: true, reason: 'in sync', etaSeconds: 0 });
  });

  it('does not call a job non-converging in its first second', () => {
    const s = simulate(new ConvergenceDetector({ windowMs: 3000 }), 0.8, 200 * MiB, 100 * MiB, 512 * MiB);
    expect(s).toMatchObject({ converging: true, reason: 'measuring' });
  });

  it('smooths the rates towards what the writer and the copier do', () => {
    const s = simulate(new ConvergenceDetector(), 8, 100 * MiB, 40 * MiB, 512 * MiB);
    expect(s.dirtyRate / MiB).toBeCloseTo(100, -1);
    expect(s.cleanRate / MiB).toBeCloseTo(40, -1);
  });
});

describe('ConvergenceDetector, re-dirtying', () => {
  it('calls a writer that re-dirties a quarter of what is copied not converging within about a second, even while the backlog shrinks', () => {
    const d = new ConvergenceDetector();
    let state: ConvergenceState | undefined;
    let t = 0;
    // A bulk copy: the backlog shrinks by 70 MiB/s net, but the writer re-dirties 90 of the 160 MiB/s copied.
    for (let backlog = 4096 * MiB, copied = 0, dirtied = 4096 * MiB; t <= 1600; t += 100) {
      state = d.sample({ nowMs: t, backlogBytes: backlog, dirtiedBytes: dirtied, copiedBytes: copied });
      copied += 16 * MiB;
      dirtied += 9 * MiB;
      backlog -= 7 * MiB;
    }
    expect(state!.converging).toBe(false);
    expect(state!.reason).toMatch(/re-dirty/);
  });

  it('does not count a steady writer the copier keeps up with', () => {
    const d = new ConvergenceDetector();
    let state: ConvergenceState | undefined;
    for (let t = 0, copied = 0; t <= 5000; t += 100) {
      state = d.sample({ nowMs: t, backlogBytes: MiB, dirtiedBytes: copied + MiB, copiedBytes: copied });
      copied += 3 * MiB; // 30 MiB/s dirtied, 30 MiB/s cleaned, the backlog a steady 1 MiB
    }
    expect(state!.converging).toBe(true);
  });

  it('does not count a writer that re-dirties a little of what is copied', () => {
    const d = new ConvergenceDetector();
    let state: ConvergenceState | undefined;
    for (let t = 0, backlog = 4096 * MiB, copied = 0, dirtied = 4096 * MiB; t <= 5000; t += 100) {
      state = d.sample({ nowMs: t, backlogBytes: backlog, dirtiedBytes: dirtied, copiedBytes: copied });
      copied += 20 * MiB;
      dirtied += 3 * MiB;
      backlog -= 17 * MiB;
    }
    expect(state!.converging).toBe(true);
  });
});

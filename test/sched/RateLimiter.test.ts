import { describe, expect, it } from 'vitest';
import { RATE_SLICE_MS, RateLimiter } from '../../src/sched/RateLimiter.js';

/** Sends `chunk`-byte requests as fast as the limiter allows over `ms` of simulated time; returns bytes sent. */
function simulate(limiter: RateLimiter, chunk: number, ms: number): number {
  let now = 0;
  let sent = 0;
  while (now < ms) {
    const wait = limiter.delay(now);
    if (wait > 0) {
      now += wait;
      continue;
    }
    limiter.account(chunk, now);
    sent += chunk;
  }
  return sent;
}

describe('RateLimiter', () => {
  it('never delays when unlimited', () => {
    const l = new RateLimiter(0);
    l.account(1e12, 0);
    expect(l.delay(0)).toBe(0);
  });

  it('lets the first request of a slice go even when it is larger than the quota', () => {
    const l = new RateLimiter(1000);
    expect(l.delay(0)).toBe(0);
    l.account(10_000, 0);
    expect(l.delay(0)).toBeGreaterThan(0);
  });

  it('holds the long-run rate to the speed with small requests', () => {
    const sent = simulate(new RateLimiter(10 << 20), 64 << 10, 10_000);
    expect(sent / 10).toBeGreaterThan(0.97 * (10 << 20));
    expect(sent / 10).toBeLessThan(1.03 * (10 << 20));
  });

  it('holds the long-run rate to the speed with requests larger than a slice', () => {
    const sent = simulate(new RateLimiter(1 << 20), 4 << 20, 60_000);
    expect(sent / 60).toBeGreaterThan(0.9 * (1 << 20));
    expect(sent / 60).toBeLessThan(1.1 * (1 << 20));
  });

  it('shortens a wait at once when the speed is raised', () => {
    const l = new RateLimiter(1 << 20);
    l.account(4 << 20, 0);
    const before = l.delay(10);
    l.setSpeed(64 << 20);
    expect(l.delay(10)).toBeLessThan(before / 10);
  });

  it('lifts the limit at once when the speed is set to 0', () => {
    const l = new RateLimiter(1 << 20);
    l.account(4 << 20, 0);
    l.setSpeed(0);
    expect(l.delay(1)).toBe(0);
  });

  it('starts a new slice once the old one has passed', () => {
    const l = new RateLimiter(1 << 20);
    l.account((1 << 20) / 10, 0);
    expect(l.delay(RATE_SLICE_MS)).toBe(0);
  });
});

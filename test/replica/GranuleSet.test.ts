import { describe, expect, it } from 'vitest';
import { GranuleSet } from '../../src/replica/GranuleSet.js';

describe('GranuleSet', () => {
  it('holds each granule once and lists them in increasing order, across word boundaries and the top bit of a word', () => {
    const set = new GranuleSet(100, [64, 31, 0, 95, 32, 31, 63]);
    expect(set.size).toBe(6);
    expect([...set.values()]).toEqual([0, 31, 32, 63, 64, 95]);
    expect(set.has(31) && set.has(95) && !set.has(30) && !set.has(99)).toBe(true);
    set.clear();
    expect(set.size).toBe(0);
    expect([...set.values()]).toEqual([]);
  });
});

import { describe, expect, it } from 'vitest';
import { RangesExtentSource } from '../../src/sched/ExtentSource.js';

describe('RangesExtentSource', () => {
  it('hands out its ranges in order, in extents of at most the size asked, and counts down what is left', () => {
    const source = new RangesExtentSource([
      [0, 10],
      [20, 25],
    ]);
    expect(source.remaining).toBe(15);
    const out: number[] = [];
    expect(source.take(out, 2, 4)).toBe(2);
    expect(out).toEqual([0, 4, 4, 4]);
    expect(source.remaining).toBe(7);
    expect(source.take(out, 10, 4)).toBe(3);
    expect(out.slice(4)).toEqual([8, 2, 20, 4, 24, 1]);
    expect(source.remaining).toBe(0);
    expect(source.exhausted).toBe(true);
  });

  it('gives back the ranges it has not handed out, from where it stopped', () => {
    const source = new RangesExtentSource([
      [0, 10],
      [20, 25],
      [30, 40],
    ]);
    source.take([], 2, 4);
    expect(source.rest()).toEqual([
      [8, 10],
      [20, 25],
      [30, 40],
    ]);
    source.take([], 2, 4); // [8, 10) and [20, 24)
    expect(source.rest()).toEqual([
      [24, 25],
      [30, 40],
    ]);
  });

  it('hands out a range given back before anything else, alone in its take, and counts it as left', () => {
    const source = new RangesExtentSource([[0, 100]]);
    const out: number[] = [];
    source.take(out, 2, 10); // [0, 20)
    source.giveBack(14, 20, 'data');
    expect(source.remaining).toBe(86);
    const again: number[] = [];
    expect(source.take(again, 4, 4)).toBe(2);
    expect(again).toEqual([14, 4, 18, 2]);
    expect(source.rest()).toEqual([[20, 100]]);
  });

  it('is not exhausted while a range given back is still to hand out, and lists it in its rest', () => {
    const source = new RangesExtentSource([[0, 8]]);
    source.take([], 1, 8);
    expect(source.exhausted).toBe(true);
    source.giveBack(4, 8, 'zeros');
    expect(source.exhausted).toBe(false);
    expect(source.rest()).toEqual([[4, 8]]);
  });

  it('hands out by kind: a stretch given back as beginning with data, or one given back as zeros before the ranges not walked yet', () => {
    const source = new RangesExtentSource([[0, 100]]);
    source.take([], 1, 40); // [0, 40)
    expect(source.has('data')).toBe(false);
    source.giveBack(10, 20, 'data');
    source.giveBack(30, 40, 'zeros');
    const out: number[] = [];
    expect(source.takeOf('data', out, 4, 100)).toBe(1);
    expect(out).toEqual([10, 10]);
    expect(source.has('data')).toBe(false);
    expect(source.takeOf('data', out, 4, 100)).toBe(0);
    source.takeOf('other', out, 4, 100);
    expect(out.slice(2)).toEqual([30, 10]);
    source.takeOf('other', out, 1, 100);
    expect(out.slice(4)).toEqual([40, 60]);
    expect(source.has('other')).toBe(false);
    expect(source.exhausted).toBe(true);
  });

  it('no longer says a range given back begins with data once zeros were given back before its start', () => {
    const source = new RangesExtentSource([[0, 100]]);
    source.take([], 1, 100);
    source.giveBack(50, 100, 'data');
    source.giveBack(40, 50, 'zeros');
    expect(source.has('data')).toBe(false);
  });
});

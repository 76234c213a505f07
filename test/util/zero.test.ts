import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isAllZero } from '../../src/util/zero.js';
import { fuzzParams } from '../helpers/fuzz.js';

describe('isAllZero', () => {
  it('is true for empty and all-zero buffers of any length', () => {
    for (const n of [0, 1, 2, 4095, 4096, 1 << 20]) expect(isAllZero(new Uint8Array(n))).toBe(true);
  });

  it('finds a single non-zero byte wherever it is, first and last included', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 70_000 }), fc.nat(), fc.integer({ min: 1, max: 255 }), (length, at, value) => {
        const buf = new Uint8Array(length);
        buf[at % length] = value;
        expect(isAllZero(buf)).toBe(false);
      }),
      fuzzParams(),
    );
  });

  it('looks only at its view, not the rest of the buffer it shares', () => {
    const whole = new Uint8Array(64).fill(7);
    whole.fill(0, 8, 56);
    expect(isAllZero(whole.subarray(8, 56))).toBe(true);
    expect(isAllZero(whole.subarray(7, 56))).toBe(false);
    expect(isAllZero(whole.subarray(8, 57))).toBe(false);
  });

  it('answers as a byte-by-byte check does on any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }).map((a) => a.map((b) => (b < 200 ? 0 : b))), (buf) => {
        expect(isAllZero(buf)).toBe(buf.every((b) => b === 0));
      }),
      fuzzParams(),
    );
  });
});

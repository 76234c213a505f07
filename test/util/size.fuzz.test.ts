import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlockmirrorError, ErrorCode } from '../../src/errors.js';
import { formatBytes, parseSize } from '../../src/util/size.js';
import { fuzzParams } from '../helpers/fuzz.js';

/** Multiplier of each suffix letter (binary, as parseSize documents). */
const MULT: Readonly<Record<string, bigint>> = { '': 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n, P: 1n << 50n };
const MAX = BigInt(Number.MAX_SAFE_INTEGER);
/** A parse of any text this long or shorter must take less than this (a linear parser takes microseconds). */
const PARSE_TIME_BOUND_MS = 250;

/** Parses, timing the call: the value, or the error it threw. */
function attempt(text: string | number): { value?: number; error?: unknown; ms: number } {
  const t0 = performance.now();
  try {
    const value = parseSize(text);
    return { value, ms: performance.now() - t0 };
  } catch (error) {
    return { error, ms: performance.now() - t0 };
  }
}

/** What every parse must give: a safe whole byte count, or a typed BM_ERR_INVALID_OPTION. */
function expectNumberOrTypedError(r: ReturnType<typeof attempt>): void {
  expect(r.ms).toBeLessThan(PARSE_TIME_BOUND_MS);
  if (r.error !== undefined) {
    expect(r.error).toBeInstanceOf(BlockmirrorError);
    expect((r.error as BlockmirrorError).code).toBe(ErrorCode.INVALID_OPTION);
    // Even for megabytes of input the message stays a line a person can read.
    expect((r.error as Error).message.length).toBeLessThan(300);
  } else {
    expect(Number.isSafeInteger(r.value)).toBe(true);
    expect(r.value).toBeGreaterThanOrEqual(0);
  }
}

/** Characters a size is made of, and a few that look like them. */
const sizeChars = fc.constantFrom(...'0123456789. \t\n.kKmMgGtTpPiIbBeE+-_,xX\u00a0\u0663\u2009');
const sizeLike = fc.string({ unit: sizeChars, maxLength: 40 });
/** Long runs of the characters the parser's pattern repeats: what makes a backtracking regex slow. */
const longRuns = fc
  .tuple(fc.constantFrom('1', ' 1', '1.', '1 K', ''), fc.constantFrom(' ', '0', '1', '\t', '9'), fc.integer({ min: 1000, max: 60_000 }), fc.constantFrom('x', '', 'K', ' K b', '.', '-'))
  .map(([head, run, n, tail]) => head + run.repeat(n) + tail);

/** A decimal written as text, with its exact value as a fraction num / den (BigInt: no rounding). */
const decimal = fc
  .tuple(
    fc.oneof(fc.bigInt({ min: 0n, max: 10n ** 20n }), fc.bigInt({ min: 0n, max: 2000n }), fc.constant(MAX), fc.constant(MAX + 1n)),
    fc.option(fc.string({ unit: fc.constantFrom(...'0123456789'), minLength: 1, maxLength: 24 }), { nil: undefined }),
    fc.constantFrom('', 'K', 'M', 'G', 'T', 'P'),
    fc.constantFrom('', 'B', 'iB', 'b', 'ib'),
    fc.constantFrom('', ' '),
    fc.boolean(),
  )
  .filter(([, , letter, unit]) => letter !== '' || unit === '' || unit === 'B' || unit === 'b')
  .map(([whole, fraction, letter, unit, gap, lower]) => {
    const l = lower ? letter.toLowerCase() : letter;
    const text = `${whole}${fraction === undefined ? '' : `.${fraction}`}${gap}${l}${unit}`;
    const den = 10n ** BigInt(fraction?.length ?? 0);
    const num = (whole * den + BigInt(fraction ?? '0')) * MULT[letter]!;
    return { text, num, den };
  });

describe('parseSize under fuzzing', () => {
  it('gives a safe whole byte count or BM_ERR_INVALID_OPTION for any text, quickly', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 64 }), sizeLike, sizeLike.map((s) => `${s}${s}${s}`)), (text) => {
        expectNumberOrTypedError(attempt(text));
      }),
      fuzzParams(20),
    );
  });

  it('takes linear time on long inputs (no regex backtracking)', () => {
    fc.assert(
      fc.property(longRuns, (text) => {
        expectNumberOrTypedError(attempt(text));
      }),
      fuzzParams(0.3),
    );
  });

  it('reads a decimal with a suffix exactly: its value when that is a whole safe number, else an error', () => {
    fc.assert(
      fc.property(decimal, ({ text, num, den }) => {
        const r = attempt(text);
        expectNumberOrTypedError(r);
        const whole = num % den === 0n && num / den <= MAX;
        if (whole) expect(r.value, text).toBe(Number(num / den));
        else expect(r.error, `${text} read as ${r.value}`).toBeDefined();
      }),
      fuzzParams(20),
    );
  });

  it('accepts a number only when it is a safe whole count', () => {
    fc.assert(
      fc.property(fc.oneof(fc.double(), fc.integer(), fc.maxSafeNat(), fc.constantFrom(Number.MAX_SAFE_INTEGER + 1, -0, Infinity, NaN)), (n) => {
        const r = attempt(n);
        expectNumberOrTypedError(r);
        if (Number.isSafeInteger(n) && n >= 0) expect(r.value).toBe(n);
        else expect(r.error).toBeDefined();
      }),
      fuzzParams(10),
    );
  });

  it('reads back what formatBytes writes for sizes it writes exactly', () => {
    // formatBytes rounds to 2 decimals below 10 units and 1 above, so quarters and halves are exact.
    const exact = fc
      .tuple(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 1023 }), fc.integer({ min: 0, max: 3 }))
      .map(([unit, whole, quarters]) => {
        const q = unit === 0 ? 0 : whole >= 10 ? quarters & 2 : quarters;
        return (whole * 4 + q) * 1024 ** unit / 4;
      })
      .filter((bytes) => Number.isSafeInteger(bytes));
    fc.assert(
      fc.property(exact, (bytes) => {
        expect(parseSize(formatBytes(bytes)), formatBytes(bytes)).toBe(bytes);
      }),
      fuzzParams(10),
    );
  });
});

describe('parseSize: inputs fuzzing found', () => {
  it('refuses a fraction too small for a double to keep (9007199254740991.05 is not whole)', () => {
    expect(() => parseSize('9007199254740991.05')).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_OPTION }));
    expect(() => parseSize('1.0000000000000001')).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_OPTION }));
    expect(() => parseSize('8191.99999999999999K')).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_OPTION }));
    expect(parseSize('1.00000000000000000000K')).toBe(1024);
  });

  it('refuses a long run of spaces in linear time, with a short message', () => {
    const text = `1${' '.repeat(1000)}x`;
    const r = attempt(text);
    expect(r.error).toMatchObject({ code: ErrorCode.INVALID_OPTION });
    expect((r.error as Error).message.length).toBeLessThan(300);
    const long = attempt(`1${' '.repeat(100_000)}x`);
    expect(long.error).toMatchObject({ code: ErrorCode.INVALID_OPTION });
    expect(long.ms).toBeLessThan(PARSE_TIME_BOUND_MS);
  });
});

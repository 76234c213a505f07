import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StateError } from '../../src/errors.js';
import {
  ACTIVITY_LOG_HEADER_BYTES,
  encodeLogHeader,
  encodeRecord,
  parseActivityLog,
  type ActivityLogContents,
} from '../../src/state/ActivityLogFile.js';
import { fuzzParams } from '../helpers/fuzz.js';

/**
 * Damages valid activity logs one way at a time (one byte changed, or the file cut short) and
 * checks that the parser never invents extents and never takes damage outside the last record
 * for a torn append: such damage could drop the extents of durable records, whose writes were let
 * through, and a resume would then miss them.
 */

const EXTENT = 4096;

/** A valid log: its bytes, where each record starts, and every extent it names. */
interface ValidLog {
  readonly bytes: Buffer;
  /** Start offset of each record; the last entry is the file length. */
  readonly bounds: readonly number[];
  readonly extents: ReadonlySet<number>;
}

const validLog: fc.Arbitrary<ValidLog> = fc
  .integer({ min: 1, max: 64 })
  .chain((extentCount) =>
    fc.tuple(
      fc.constant(extentCount),
      fc.integer({ min: 0, max: 2 ** 20 }),
      // Each record names an extent at most once, as ActivityLog writes them.
      fc.array(fc.uniqueArray(fc.integer({ min: 0, max: extentCount - 1 }), { maxLength: 8 }), { minLength: 1, maxLength: 5 }),
    ),
  )
  .map(([extentCount, epoch, records]) => {
    const parts = [encodeLogHeader({ extentSize: EXTENT, size: extentCount * EXTENT - 100, epoch })];
    const bounds = [ACTIVITY_LOG_HEADER_BYTES];
    records.forEach((extents, seq) => {
      const r = encodeRecord(seq, extents);
      parts.push(r);
      bounds.push(bounds[bounds.length - 1]! + r.length);
    });
    return { bytes: Buffer.concat(parts), bounds, extents: new Set(records.flat()) };
  });

/** The parse of `b`: its contents, or the StateError it threw (anything else fails the property). */
function parse(b: Buffer): ActivityLogContents | StateError {
  try {
    return parseActivityLog(b, 'fuzz.log');
  } catch (err) {
    if (err instanceof StateError && /^BM_ERR_LOG_/.test(err.code)) return err;
    throw err;
  }
}

function expectSubset(got: readonly number[], of: ReadonlySet<number>): void {
  for (const e of got) expect(of.has(e)).toBe(true);
}

describe('parseActivityLog under damage', () => {
  it('reads a byte flip as a BM_ERR_LOG_* error, or (only in the last record) as a subset of the extents', () => {
    fc.assert(
      fc.property(validLog, fc.nat(), fc.integer({ min: 1, max: 255 }), (log, at, mask) => {
        const index = at % log.bytes.length;
        const b = Buffer.from(log.bytes);
        b[index]! ^= mask;
        const result = parse(b);
        if (result instanceof StateError) return;
        const lastRecordStart = log.bounds[log.bounds.length - 2]!;
        // Only the last record may be taken for torn; the snapshot never is (it is made durable before the file is named).
        expect(index).toBeGreaterThanOrEqual(lastRecordStart);
        expect(log.bounds.length).toBeGreaterThan(2);
        expectSubset(result.extents, log.extents);
      }),
      fuzzParams(5),
    );
  });

  it('reads a cut-short file as a BM_ERR_LOG_* error, or as a subset of the extents', () => {
    fc.assert(
      fc.property(validLog, fc.nat(), (log, at) => {
        const length = at % (log.bytes.length + 1);
        const result = parse(log.bytes.subarray(0, length));
        if (result instanceof StateError) return;
        expectSubset(result.extents, log.extents);
        expect(result.tornTail).toBe(!log.bounds.includes(length));
      }),
      fuzzParams(5),
    );
  });

  it('reads an undamaged log as exactly its extents', () => {
    fc.assert(
      fc.property(validLog, (log) => {
        const result = parseActivityLog(log.bytes, 'fuzz.log');
        expect(result.extents).toEqual([...log.extents].sort((a, b) => a - b));
        expect(result.tornTail).toBe(false);
        expect(result.end).toBe(log.bytes.length);
      }),
      fuzzParams(),
    );
  });
});

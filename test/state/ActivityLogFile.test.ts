import { appendFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ErrorCode, StateError, type ErrorCodeValue } from '../../src/errors.js';
import {
  ACTIVITY_LOG_HEADER_BYTES,
  RECORD_HEADER_BYTES,
  encodeLogHeader,
  encodeRecord,
  parseActivityLog,
  readActivityLog,
  writeActivityLog,
  type ActivityLogHeader,
} from '../../src/state/ActivityLogFile.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();

const EXTENT = 1 << 20;
/** 100 extents, the last one short. */
const HEADER: ActivityLogHeader = { extentSize: EXTENT, size: 99 * EXTENT + 4096, epoch: 7 };
/** Header field offsets (the comments of src/state/ActivityLogFile.ts). */
const AT = { version: 8, extentSize: 16, epoch: 32, headerCrc: 60 };

/** A log written by writeActivityLog, with `later` records appended by hand. */
async function logFile(snapshot: readonly number[], later: readonly (readonly number[])[] = []): Promise<string> {
  const path = join(await scratch(), 'activity.log');
  let end = await writeActivityLog(path, HEADER, snapshot);
  for (const [i, extents] of later.entries()) {
    const record = encodeRecord(i + 1, extents);
    expect((await readFile(path)).length).toBe(end);
    await appendFile(path, record);
    end += record.length;
  }
  return path;
}

/** The bytes of a log held in memory: header, snapshot, later records. */
function logBytes(snapshot: readonly number[], later: readonly (readonly number[])[] = [], header = HEADER): Buffer {
  return Buffer.concat([encodeLogHeader(header), encodeRecord(0, snapshot), ...later.map((e, i) => encodeRecord(i + 1, e))]);
}

function parseError(b: Buffer): unknown {
  try {
    parseActivityLog(b, '/x/activity.log');
    return undefined;
  } catch (err) {
    return err;
  }
}

function expectCode(err: unknown, code: ErrorCodeValue): void {
  expect(err).toBeInstanceOf(StateError);
  expect((err as StateError).code).toBe(code);
}

describe('writeActivityLog and readActivityLog', () => {
  it('round-trips the header, and reads the union of every record sorted', async () => {
    const path = await logFile([9, 3], [[50, 3], [0], [99, 9]]);
    const log = await readActivityLog(path);
    expect(log.header).toEqual(HEADER);
    expect(log.extents).toEqual([0, 3, 9, 50, 99]);
    expect(log.records).toBe(4);
    expect(log.tornTail).toBe(false);
  });

  it('returns as end the file length, where the next record goes', async () => {
    const path = join(await scratch(), 'activity.log');
    const end = await writeActivityLog(path, HEADER, [1, 2]);
    expect(end).toBe(ACTIVITY_LOG_HEADER_BYTES + RECORD_HEADER_BYTES + 8);
    await appendFile(path, encodeRecord(1, [5]));
    const log = await readActivityLog(path);
    expect(log.end).toBe(end + RECORD_HEADER_BYTES + 4);
    expect(log.extents).toEqual([1, 2, 5]);
  });

  it('reads a log with an empty snapshot as naming no extent', async () => {
    const log = await readActivityLog(await logFile([]));
    expect(log.extents).toEqual([]);
    expect(log.records).toBe(1);
  });

  it('replaces an existing log whole', async () => {
    const path = await logFile([1], [[2]]);
    await writeActivityLog(path, { ...HEADER, epoch: 8 }, [4]);
    const log = await readActivityLog(path);
    expect(log.header.epoch).toBe(8);
    expect(log.extents).toEqual([4]);
    expect(log.records).toBe(1);
  });

  it('reports a missing file as an I/O error', async () => {
    const err = await readActivityLog(join(await scratch(), 'nope.log')).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe(ErrorCode.IO);
  });
});

describe('parseActivityLog: a torn last record', () => {
  it('ignores a last record cut short at the end of the file, with tornTail', () => {
    const whole = logBytes([1], [[2], [3, 4, 5]]);
    const cut = whole.subarray(0, whole.length - 5);
    const log = parseActivityLog(cut, 'x');
    expect(log.tornTail).toBe(true);
    expect(log.extents).toEqual([1, 2]);
    expect(log.records).toBe(2);
    expect(log.end).toBe(logBytes([1], [[2]]).length);
  });

  it('ignores a last record cut inside its own header', () => {
    const whole = logBytes([1], [[2], [3]]);
    const log = parseActivityLog(whole.subarray(0, whole.length - RECORD_HEADER_BYTES), 'x');
    expect(log.tornTail).toBe(true);
    expect(log.extents).toEqual([1, 2]);
  });

  it('ignores a zero-filled tail (the size reached the disk before the data), with tornTail', () => {
    const b = Buffer.concat([logBytes([1], [[2]]), Buffer.alloc(24)]);
    const log = parseActivityLog(b, 'x');
    expect(log.tornTail).toBe(true);
    expect(log.extents).toEqual([1, 2]);
    expect(log.end).toBe(b.length - 24);
  });

  it('ignores a last record whose extent numbers were zero-filled', () => {
    const whole = logBytes([1], [[2, 3]]);
    whole.fill(0, whole.length - 8);
    const log = parseActivityLog(whole, 'x');
    expect(log.tornTail).toBe(true);
    expect(log.extents).toEqual([1]);
  });
});

describe('parseActivityLog: damage', () => {
  it('is BM_ERR_LOG_CORRUPT for a damaged record followed by more bytes', () => {
    const b = logBytes([1], [[2], [3]]);
    const second = ACTIVITY_LOG_HEADER_BYTES + (RECORD_HEADER_BYTES + 4) * 2;
    b[second - 1]! ^= 0x01; // the extent number of record 1
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('is BM_ERR_LOG_CORRUPT for a record whose count was damaged to reach past the end, when whole records follow it', () => {
    // Record 1 (extent 2) is durable and followed by record 2 (extent 3): a torn append is always the
    // last record, so damage to record 1 cannot be a torn tail, and extent 3 must not be dropped.
    const b = logBytes([1], [[2], [3]]);
    const recordOne = ACTIVITY_LOG_HEADER_BYTES + RECORD_HEADER_BYTES + 4;
    b[recordOne + 11] = 0x01; // count's high byte: 2^24 + 1 extents
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('is BM_ERR_LOG_EMPTY for an empty file', () => {
    expectCode(parseError(Buffer.alloc(0)), ErrorCode.LOG_EMPTY);
  });

  it('is BM_ERR_LOG_FOREIGN for another magic', () => {
    const b = logBytes([1]);
    b.write('BMIRDBMP', 0, 'latin1');
    expectCode(parseError(b), ErrorCode.LOG_FOREIGN);
  });

  it('is BM_ERR_LOG_FOREIGN for a short file that is not a prefix of the magic', () => {
    expectCode(parseError(Buffer.from('BMX', 'latin1')), ErrorCode.LOG_FOREIGN);
  });

  it.each([3, 8, 11, 12, 40, 63])('is BM_ERR_LOG_TRUNCATED for a file ending inside the header (%i bytes)', (n) => {
    expectCode(parseError(logBytes([1]).subarray(0, n)), ErrorCode.LOG_TRUNCATED);
  });

  it('is BM_ERR_LOG_VERSION for another format version', () => {
    const b = logBytes([1]);
    b.writeUInt32LE(2, AT.version);
    b.writeUInt32LE(crc32(b.subarray(0, AT.headerCrc)), AT.headerCrc);
    expectCode(parseError(b), ErrorCode.LOG_VERSION);
  });

  it('is BM_ERR_LOG_VERSION for another version even when the header checksum does not match', () => {
    const b = logBytes([1]);
    b.writeUInt32LE(2, AT.version);
    expectCode(parseError(b), ErrorCode.LOG_VERSION);
  });

  it('is BM_ERR_LOG_CORRUPT for a header that does not match its checksum', () => {
    const b = logBytes([1]);
    b[AT.epoch]! ^= 0x10;
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('is BM_ERR_LOG_CORRUPT for a checksummed header with an extent size that is not a power of two', () => {
    const b = logBytes([1]);
    b.writeUInt32LE(3 * 512, AT.extentSize);
    b.writeUInt32LE(crc32(b.subarray(0, AT.headerCrc)), AT.headerCrc);
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('is BM_ERR_LOG_CORRUPT for a record out of sequence', () => {
    const b = Buffer.concat([encodeLogHeader(HEADER), encodeRecord(0, [1]), encodeRecord(2, [2])]);
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('is BM_ERR_LOG_CORRUPT for a snapshot whose sequence is not 0', () => {
    const b = Buffer.concat([encodeLogHeader(HEADER), encodeRecord(1, [1])]);
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('is BM_ERR_LOG_CORRUPT for an extent number beyond the image', () => {
    expectCode(parseError(logBytes([1], [[100]])), ErrorCode.LOG_CORRUPT);
  });

  it('accepts the last extent of the image', () => {
    expect(parseActivityLog(logBytes([99]), 'x').extents).toEqual([99]);
  });

  it('is BM_ERR_LOG_TRUNCATED for a file holding only the header', () => {
    expectCode(parseError(encodeLogHeader(HEADER)), ErrorCode.LOG_TRUNCATED);
  });

  it('is BM_ERR_LOG_TRUNCATED for a file ending inside the snapshot header', () => {
    const b = logBytes([1, 2]);
    expectCode(parseError(b.subarray(0, ACTIVITY_LOG_HEADER_BYTES + 10)), ErrorCode.LOG_TRUNCATED);
  });

  it('is BM_ERR_LOG_TRUNCATED for a file ending inside the snapshot extent numbers', () => {
    // ErrorCode.LOG_TRUNCATED: "The activity log ends inside its header or its snapshot."
    const b = logBytes([1, 2]);
    expectCode(parseError(b.subarray(0, b.length - 2)), ErrorCode.LOG_TRUNCATED);
  });

  it('is BM_ERR_LOG_CORRUPT for a damaged snapshot, even when it is the last record', () => {
    const b = logBytes([1, 2]);
    b[b.length - 1]! ^= 0x80;
    expectCode(parseError(b), ErrorCode.LOG_CORRUPT);
  });

  it('names the file in the message and carries the hint', () => {
    const err = parseError(Buffer.alloc(0)) as StateError;
    expect(err.message).toContain('/x/activity.log');
    expect(err.message).toContain(err.hint);
  });

  it('reads a damaged file from disk with the same code', async () => {
    const path = await logFile([1]);
    await writeFile(path, encodeLogHeader(HEADER));
    const err = await readActivityLog(path).catch((e: unknown) => e);
    expectCode(err, ErrorCode.LOG_TRUNCATED);
  });
});

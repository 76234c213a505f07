import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { BlockmirrorError, ErrorCode, StateError, toIoError, type ErrorCodeValue } from '../errors.js';
import { writeFileAtomic } from '../util/writeFileAtomic.js';

/**
 * The activity log's file (docs/activity-log.md): a 64-byte header, then records. The first record
 * (sequence 0) is a snapshot of the extents hot when the file was written; every later one adds
 * extents that became hot since. A file is only ever appended to, and replaced whole (temporary
 * file, fsync, rename, directory fsync) when the log is compacted at a checkpoint.
 */

/** The first 8 bytes of every activity log. */
export const ACTIVITY_LOG_MAGIC = 'BMIRALOG';
/** The format version this build writes and reads. */
export const ACTIVITY_LOG_VERSION = 1;
/** Header length in bytes; records start here. */
export const ACTIVITY_LOG_HEADER_BYTES = 64;
/** Bytes of a record's own header, before its extent numbers. */
export const RECORD_HEADER_BYTES = 16;
/** A record's magic, "ALRC" as a little-endian 32-bit word. */
const RECORD_MAGIC = 0x43524c41;

const Field = {
  magic: 0,
  version: 8,
  headerBytes: 12,
  extentSize: 16,
  size: 24,
  epoch: 32,
  headerCrc: 60,
} as const;

/** What the header says. */
export interface ActivityLogHeader {
  /** Bytes per log extent. */
  readonly extentSize: number;
  /** Image size in bytes. */
  readonly size: number;
  /** The generation of the bitmap file this log goes with (the log covers writes since that save). */
  readonly epoch: number;
}

/** A log as read back: its header and every extent it names. */
export interface ActivityLogContents {
  readonly header: ActivityLogHeader;
  /** Extent numbers (offset / extentSize), sorted, each once. */
  readonly extents: readonly number[];
  /** Records read, the snapshot included. */
  readonly records: number;
  /** True when a last record was cut short (power lost during its append): it was not used. */
  readonly tornTail: boolean;
  /** File bytes up to the end of the last whole record: where the next append goes. */
  readonly end: number;
}

/** Extents of an image: how many log extents cover `size` bytes. */
export function extentCountFor(size: number, extentSize: number): number {
  return Math.ceil(size / extentSize);
}

function fail(code: ErrorCodeValue, path: string, message: string): StateError {
  return new StateError(code, `${path}: ${message}`);
}

/** The 64 header bytes. */
export function encodeLogHeader(h: ActivityLogHeader): Buffer {
  const b = Buffer.alloc(ACTIVITY_LOG_HEADER_BYTES);
  b.write(ACTIVITY_LOG_MAGIC, Field.magic, 'latin1');
  b.writeUInt32LE(ACTIVITY_LOG_VERSION, Field.version);
  b.writeUInt32LE(ACTIVITY_LOG_HEADER_BYTES, Field.headerBytes);
  b.writeUInt32LE(h.extentSize, Field.extentSize);
  b.writeBigUInt64LE(BigInt(h.size), Field.size);
  b.writeBigUInt64LE(BigInt(h.epoch), Field.epoch);
  b.writeUInt32LE(crc32(b.subarray(0, Field.headerCrc)), Field.headerCrc);
  return b;
}

/** One record: its header (magic, sequence, count, crc32 of the rest) and the extent numbers. */
export function encodeRecord(seq: number, extents: readonly number[]): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_BYTES + 4 * extents.length);
  b.writeUInt32LE(RECORD_MAGIC, 0);
  b.writeUInt32LE(seq >>> 0, 4);
  b.writeUInt32LE(extents.length, 8);
  for (let i = 0; i < extents.length; i++) b.writeUInt32LE(extents[i]!, RECORD_HEADER_BYTES + 4 * i);
  b.writeUInt32LE(recordCrc(b), 12);
  return b;
}

function recordCrc(record: Buffer): number {
  return crc32(record.subarray(RECORD_HEADER_BYTES), crc32(record.subarray(0, 12)));
}

function decodeHeader(b: Buffer, path: string): ActivityLogHeader {
  if (b.length === 0) throw fail(ErrorCode.LOG_EMPTY, path, 'the activity log is empty');
  const magic = Buffer.from(ACTIVITY_LOG_MAGIC, 'latin1');
  const seen = b.subarray(0, Math.min(magic.length, b.length));
  if (!seen.equals(magic.subarray(0, seen.length))) throw fail(ErrorCode.LOG_FOREIGN, path, 'not a blockmirror activity log (unknown magic)');
  if (b.length < Field.version + 4) throw fail(ErrorCode.LOG_TRUNCATED, path, `the file ends inside its header (${b.length} bytes)`);
  const version = b.readUInt32LE(Field.version);
  if (version !== ACTIVITY_LOG_VERSION) {
    throw fail(ErrorCode.LOG_VERSION, path, `activity log format version ${version}; this build reads version ${ACTIVITY_LOG_VERSION}`);
  }
  if (b.length < ACTIVITY_LOG_HEADER_BYTES) throw fail(ErrorCode.LOG_TRUNCATED, path, `the file ends inside its header (${b.length} bytes)`);
  if (crc32(b.subarray(0, Field.headerCrc)) !== b.readUInt32LE(Field.headerCrc)) {
    throw fail(ErrorCode.LOG_CORRUPT, path, 'the header does not match its checksum');
  }
  const extentSize = b.readUInt32LE(Field.extentSize);
  const size = Number(b.readBigUInt64LE(Field.size));
  const epoch = Number(b.readBigUInt64LE(Field.epoch));
  if (
    b.readUInt32LE(Field.headerBytes) !== ACTIVITY_LOG_HEADER_BYTES ||
    extentSize < 512 ||
    (extentSize & (extentSize - 1)) !== 0 ||
    !Number.isSafeInteger(size) ||
    !Number.isSafeInteger(epoch) ||
    extentCountFor(size, extentSize) > 2 ** 32
  ) {
    throw fail(ErrorCode.LOG_CORRUPT, path, 'the header fields do not make sense');
  }
  return { extentSize, size, epoch };
}

/**
 * Whether the damaged record at `at` can be a torn append: it reaches the end of the file (cut
 * short), or only zeros follow (a size that reached the disk before its data), and no whole record
 * with a later sequence number comes after it. A torn append is always the last record; a damaged
 * count that merely makes a record look long must not hide the synced records behind it.
 */
function isTornTail(b: Buffer, at: number, declaredEnd: number, seq: number, extentCount: number): boolean {
  if (declaredEnd < b.length) {
    for (let i = at; i < b.length; i++) if (b[i] !== 0) return false;
    return true;
  }
  for (let p = at + 4; p + RECORD_HEADER_BYTES <= b.length; p += 4) {
    if (b.readUInt32LE(p) !== RECORD_MAGIC || b.readUInt32LE(p + 4) <= seq) continue;
    const count = b.readUInt32LE(p + 8);
    const end = p + RECORD_HEADER_BYTES + 4 * count;
    if (count <= extentCount && end <= b.length && recordCrc(b.subarray(p, end)) === b.readUInt32LE(p + 12)) return false;
  }
  return true;
}

/**
 * Parses a whole log file. Every problem has its own code (`BM_ERR_LOG_EMPTY`, `_FOREIGN`,
 * `_TRUNCATED`, `_VERSION`, `_CORRUPT`). Only the last record may be damaged, and only by being
 * cut short (or zero-filled) at the end of the file: records are appended one at a time, each
 * made durable before the next, so a torn one is always the last, and none of its writes was
 * let through (it is ignored). Damage anywhere else is `BM_ERR_LOG_CORRUPT`.
 */
export function parseActivityLog(b: Buffer, path: string): ActivityLogContents {
  const header = decodeHeader(b, path);
  const extentCount = extentCountFor(header.size, header.extentSize);
  const seen = new Set<number>();
  let at = ACTIVITY_LOG_HEADER_BYTES;
  let records = 0;
  let tornTail = false;
  while (at < b.length) {
    const remaining = b.length - at;
    const count = remaining >= 12 ? b.readUInt32LE(at + 8) : 0;
    const declaredEnd = at + RECORD_HEADER_BYTES + 4 * count;
    const whole =
      remaining >= RECORD_HEADER_BYTES &&
      b.readUInt32LE(at) === RECORD_MAGIC &&
      count <= extentCount &&
      declaredEnd <= b.length &&
      recordCrc(b.subarray(at, declaredEnd)) === b.readUInt32LE(at + 12);
    if (!whole) {
      // The snapshot was made durable before the file got its name: it cannot be torn.
      if (records > 0 && isTornTail(b, at, declaredEnd, records, extentCount)) {
        tornTail = true;
        break;
      }
      const cutShort = remaining < RECORD_HEADER_BYTES || (b.readUInt32LE(at) === RECORD_MAGIC && count <= extentCount && declaredEnd > b.length);
      if (records === 0 && cutShort) throw fail(ErrorCode.LOG_TRUNCATED, path, 'the file ends inside its snapshot');
      throw fail(ErrorCode.LOG_CORRUPT, path, `record ${records} at byte ${at} is damaged`);
    }
    if (b.readUInt32LE(at + 4) !== records) throw fail(ErrorCode.LOG_CORRUPT, path, `record ${records} at byte ${at} is out of sequence`);
    for (let i = 0; i < count; i++) {
      const e = b.readUInt32LE(at + RECORD_HEADER_BYTES + 4 * i);
      if (e >= extentCount) throw fail(ErrorCode.LOG_CORRUPT, path, `record ${records} names extent ${e}; the image has ${extentCount}`);
      seen.add(e);
    }
    records++;
    at = declaredEnd;
  }
  if (records === 0) throw fail(ErrorCode.LOG_TRUNCATED, path, 'the file ends before its snapshot');
  return { header, extents: [...seen].sort((x, y) => x - y), records, tornTail, end: at };
}

/** Reads and parses a log file (see {@link parseActivityLog}). */
export async function readActivityLog(path: string): Promise<ActivityLogContents> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw toIoError(err, 'open', path);
  }
  try {
    const { size } = await fh.stat();
    const b = Buffer.alloc(size);
    const { bytesRead } = await fh.read(b, 0, size, 0);
    return parseActivityLog(b.subarray(0, bytesRead), path);
  } catch (err) {
    if (err instanceof BlockmirrorError) throw err;
    throw toIoError(err, 'read', path);
  } finally {
    await fh.close();
  }
}

/**
 * Writes a new log file holding `header` and a snapshot of `extents`, atomically: after a crash
 * there is the old file or the new one. Returns the new file's length (where appends go).
 */
export async function writeActivityLog(path: string, header: ActivityLogHeader, extents: readonly number[]): Promise<number> {
  const parts = [encodeLogHeader(header), encodeRecord(0, extents)];
  await writeFileAtomic(path, parts);
  return parts[0]!.length + parts[1]!.length;
}

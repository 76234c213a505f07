import { open, type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { crc32 } from 'node:zlib';
import { BitmapError, BlockmirrorError, ErrorCode, toIoError, type ErrorCodeValue } from '../errors.js';
import { bitCountFor } from './BitmapLayout.js';
import { DirtyBitmap } from './DirtyBitmap.js';
import { writeFileAtomic } from '../util/writeFileAtomic.js';

/**
 * The persistent bitmap file (docs/bitmap-format.md): a 64-byte little-endian header, then the
 * bits as little-endian 32-bit words. Everything here errs on the side of dirty (docs/architecture.md,
 * invariant 5): a file that may not match the bitmap it came from loads as all dirty.
 */

/** The first 8 bytes of every bitmap file. */
export const BITMAP_FILE_MAGIC = 'BMIRDBMP';
/** The format version this build writes and reads. */
export const BITMAP_FILE_VERSION = 1;
/** Header length in bytes; the body starts here. */
export const BITMAP_HEADER_BYTES = 64;
/** Header flag: the bitmap in memory may differ from this file (set by {@link markInUse}, cleared by a clean save). */
export const BITMAP_FLAG_IN_USE = 1;
/** Every flag this version knows; a file with another set is from a newer version. */
const KNOWN_FLAGS = BITMAP_FLAG_IN_USE;

/** Byte offsets of the header fields. */
const Field = {
  magic: 0,
  version: 8,
  headerBytes: 12,
  flags: 16,
  granularity: 20,
  size: 24,
  generation: 32,
  bitCount: 40,
  bodyBytes: 48,
  bodyCrc: 56,
  headerCrc: 60,
} as const;

/** The header of a bitmap file, as read or written. */
export interface BitmapFileHeader {
  readonly version: number;
  readonly flags: number;
  /** The in-use flag: the file may be older than the bitmap it was saved from. */
  readonly inUse: boolean;
  readonly granularity: number;
  /** Image size in bytes. */
  readonly size: number;
  /** Bumped by every save: tells copies of a file apart. */
  readonly generation: number;
  readonly bitCount: number;
  readonly bodyBytes: number;
  /** crc32 of the body. */
  readonly bodyCrc: number;
}

/** Options of {@link saveBitmap}. */
export interface SaveBitmapOptions {
  /**
   * Save with the in-use flag set (default false: a clean save). A job checkpointing a bitmap it
   * keeps changing saves in use; a job that has stopped writing to it saves clean.
   */
  inUse?: boolean;
  /** The generation to write (default: the existing file's plus one, or 1). */
  generation?: number;
}

/** Options of {@link loadBitmap}. */
export interface LoadBitmapOptions {
  /** The image size the bitmap must be for, else `BM_ERR_BITMAP_GEOMETRY`. */
  size?: number;
  /** The granularity the bitmap must have, else `BM_ERR_BITMAP_GEOMETRY`. */
  granularity?: number;
  /** Load the stored bits of a file flagged in-use instead of all dirty (it is still reported inconsistent). */
  trustInUse?: boolean;
}

/** What {@link loadBitmap} returns. */
export interface LoadedBitmap {
  /** The bits: all set when the file is in use (unless `trustInUse`). */
  readonly bitmap: DirtyBitmap;
  readonly header: BitmapFileHeader;
  /** False when the file was flagged in-use: its bits may miss writes. */
  readonly consistent: boolean;
}

const littleEndian = endianness() === 'LE';

function fail(code: ErrorCodeValue, path: string, message: string): BitmapError {
  return new BitmapError(code, `${path}: ${message}`);
}

/** Builds the 64 header bytes, checksum included. */
function encodeHeader(h: BitmapFileHeader): Buffer {
  const b = Buffer.alloc(BITMAP_HEADER_BYTES);
  b.write(BITMAP_FILE_MAGIC, Field.magic, 'latin1');
  b.writeUInt32LE(h.version, Field.version);
  b.writeUInt32LE(BITMAP_HEADER_BYTES, Field.headerBytes);
  b.writeUInt32LE(h.flags, Field.flags);
  b.writeUInt32LE(h.granularity, Field.granularity);
  b.writeBigUInt64LE(BigInt(h.size), Field.size);
  b.writeBigUInt64LE(BigInt(h.generation), Field.generation);
  b.writeBigUInt64LE(BigInt(h.bitCount), Field.bitCount);
  b.writeBigUInt64LE(BigInt(h.bodyBytes), Field.bodyBytes);
  b.writeUInt32LE(h.bodyCrc, Field.bodyCrc);
  b.writeUInt32LE(crc32(b.subarray(0, Field.headerCrc)), Field.headerCrc);
  return b;
}

function readU64(b: Buffer, at: number): number {
  const v = b.readBigUInt64LE(at);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : Number.NaN;
}

/**
 * Checks the header bytes of a file of `fileBytes` bytes, in an order that names the first real
 * problem: empty, foreign, truncated, another version, corrupt header. The body is not checked.
 */
function decodeHeader(b: Buffer, fileBytes: number, path: string): BitmapFileHeader {
  if (fileBytes === 0) throw fail(ErrorCode.BITMAP_EMPTY, path, 'the bitmap file is empty');
  const magic = Buffer.from(BITMAP_FILE_MAGIC, 'latin1');
  const seen = b.subarray(0, Math.min(magic.length, b.length));
  if (!seen.equals(magic.subarray(0, seen.length))) {
    throw fail(ErrorCode.BITMAP_FOREIGN, path, 'not a blockmirror bitmap file (unknown magic)');
  }
  if (b.length < Field.version + 4) throw fail(ErrorCode.BITMAP_TRUNCATED, path, `the file ends inside its header (${fileBytes} bytes)`);
  // The version comes before the header checksum: another version may lay its header out otherwise.
  const version = b.readUInt32LE(Field.version);
  if (version !== BITMAP_FILE_VERSION) {
    throw fail(ErrorCode.BITMAP_VERSION, path, `bitmap format version ${version}; this build reads version ${BITMAP_FILE_VERSION}`);
  }
  if (b.length < BITMAP_HEADER_BYTES) throw fail(ErrorCode.BITMAP_TRUNCATED, path, `the file ends inside its header (${fileBytes} bytes)`);
  if (crc32(b.subarray(0, Field.headerCrc)) !== b.readUInt32LE(Field.headerCrc)) {
    throw fail(ErrorCode.BITMAP_HEADER_CORRUPT, path, 'the header does not match its checksum');
  }
  const flags = b.readUInt32LE(Field.flags);
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    throw fail(ErrorCode.BITMAP_VERSION, path, `the header has flags 0x${flags.toString(16)} this build does not know`);
  }
  const header: BitmapFileHeader = {
    version,
    flags,
    inUse: (flags & BITMAP_FLAG_IN_USE) !== 0,
    granularity: b.readUInt32LE(Field.granularity),
    size: readU64(b, Field.size),
    generation: readU64(b, Field.generation),
    bitCount: readU64(b, Field.bitCount),
    bodyBytes: readU64(b, Field.bodyBytes),
    bodyCrc: b.readUInt32LE(Field.bodyCrc),
  };
  let bitCount: number;
  try {
    bitCount = bitCountFor(header.size, header.granularity);
  } catch (err) {
    // A checksummed header with impossible geometry was written wrong; do not trust it.
    throw fail(ErrorCode.BITMAP_HEADER_CORRUPT, path, `impossible geometry: ${(err as Error).message}`);
  }
  if (
    b.readUInt32LE(Field.headerBytes) !== BITMAP_HEADER_BYTES ||
    header.bitCount !== bitCount ||
    header.bodyBytes !== bodyBytesFor(bitCount) ||
    !Number.isSafeInteger(header.generation)
  ) {
    throw fail(ErrorCode.BITMAP_HEADER_CORRUPT, path, 'the header fields do not agree with each other');
  }
  return header;
}

function bodyBytesFor(bitCount: number): number {
  return Math.ceil(bitCount / 32) * 4;
}

/** Reads and checks the header of the file open as `fh`. */
async function readHeader(fh: FileHandle, path: string): Promise<{ header: BitmapFileHeader; fileBytes: number }> {
  const fileBytes = (await fh.stat()).size;
  const b = Buffer.alloc(Math.min(BITMAP_HEADER_BYTES, fileBytes));
  const { bytesRead } = await fh.read(b, 0, b.length, 0);
  return { header: decodeHeader(b.subarray(0, bytesRead), fileBytes, path), fileBytes };
}

/** Runs `body` with `path` open, turning system errors into `IoError`s and closing the file. */
async function withFile<T>(path: string, flags: string, body: (fh: FileHandle) => Promise<T>): Promise<T> {
  let fh: FileHandle;
  try {
    fh = await open(path, flags);
  } catch (err) {
    throw toIoError(err, 'open', path);
  }
  try {
    return await body(fh);
  } catch (err) {
    if (err instanceof BlockmirrorError) throw err;
    throw toIoError(err, flags === 'r' ? 'read' : 'write', path);
  } finally {
    await fh.close();
  }
}

/** Reads and checks only the header of a bitmap file. */
export async function readBitmapHeader(path: string): Promise<BitmapFileHeader> {
  return withFile(path, 'r', async (fh) => (await readHeader(fh, path)).header);
}

/**
 * Loads a bitmap file, checking everything: each problem has its own `BitmapError` code
 * (`BM_ERR_BITMAP_EMPTY`, `_FOREIGN`, `_TRUNCATED`, `_VERSION`, `_HEADER_CORRUPT`, `_CORRUPT`,
 * and `_GEOMETRY` when `options.size` or `options.granularity` disagree). A file flagged in-use
 * loads as inconsistent and all dirty, unless `options.trustInUse`.
 */
export async function loadBitmap(path: string, options: LoadBitmapOptions = {}): Promise<LoadedBitmap> {
  return withFile(path, 'r', async (fh) => {
    const { header, fileBytes } = await readHeader(fh, path);
    checkExpectedGeometry(header, options, path);
    const expected = BITMAP_HEADER_BYTES + header.bodyBytes;
    if (fileBytes < expected) throw fail(ErrorCode.BITMAP_TRUNCATED, path, `the file has ${fileBytes} bytes; its header says ${expected}`);
    if (fileBytes > expected) throw fail(ErrorCode.BITMAP_CORRUPT, path, `the file has ${fileBytes} bytes; its header says ${expected}`);
    const body = Buffer.alloc(header.bodyBytes);
    const { bytesRead } = await fh.read(body, 0, body.length, BITMAP_HEADER_BYTES);
    if (bytesRead !== body.length) throw fail(ErrorCode.BITMAP_TRUNCATED, path, 'the file ended while reading its body');
    if (crc32(body) !== header.bodyCrc) throw fail(ErrorCode.BITMAP_CORRUPT, path, 'the body does not match its checksum');
    const words = wordsOf(body);
    const tail = header.bitCount & 31;
    if (tail !== 0 && words[words.length - 1]! >>> tail !== 0) {
      throw fail(ErrorCode.BITMAP_CORRUPT, path, 'bits are set past the end of the image');
    }
    const consistent = !header.inUse;
    let bitmap: DirtyBitmap;
    if (consistent || options.trustInUse) {
      bitmap = DirtyBitmap.fromWords(header.size, header.granularity, words);
    } else {
      bitmap = DirtyBitmap.create(header.size, header.granularity);
      bitmap.markAll();
    }
    return { bitmap, header, consistent };
  });
}

function checkExpectedGeometry(header: BitmapFileHeader, options: LoadBitmapOptions, path: string): void {
  const wrongSize = options.size !== undefined && options.size !== header.size;
  const wrongGranularity = options.granularity !== undefined && options.granularity !== header.granularity;
  if (wrongSize || wrongGranularity) {
    throw fail(
      ErrorCode.BITMAP_GEOMETRY,
      path,
      `the bitmap is for ${header.size} bytes at granularity ${header.granularity}; expected ${options.size ?? header.size} bytes at granularity ${options.granularity ?? header.granularity}`,
    );
  }
}

/** The body's 32-bit words in this machine's order (the file is little-endian). */
function wordsOf(body: Buffer): Uint32Array {
  if (!littleEndian) body.swap32();
  return new Uint32Array(body.buffer, body.byteOffset, body.length / 4);
}

/** The bitmap's words as file body bytes. */
function bodyOf(bitmap: DirtyBitmap): Buffer {
  const words = bitmap.toWords();
  const body = Buffer.from(words.buffer, words.byteOffset, words.byteLength);
  if (!littleEndian) body.swap32();
  return body;
}

/**
 * Saves a bitmap atomically: a temporary file in the same directory, written and fsynced, renamed
 * over `path`, then the directory fsynced. A crash leaves either the old file or the new one.
 * The bits are copied first, so a bitmap being marked meanwhile saves a consistent picture of
 * some moment; save it `inUse` unless its writers have stopped. Returns the header written.
 */
export async function saveBitmap(path: string, bitmap: DirtyBitmap, options: SaveBitmapOptions = {}): Promise<BitmapFileHeader> {
  const generation = options.generation ?? (await nextGeneration(path));
  // A generation a loader would refuse (see readBitmapHeader) is refused here, before anything is written.
  if (!Number.isSafeInteger(generation) || generation < 0) {
    throw new BitmapError(ErrorCode.BITMAP_STATE, `cannot save ${path}: generation ${generation} is not a whole number from 0 to 2^53 - 1`);
  }
  const body = bodyOf(bitmap);
  const flags = options.inUse ? BITMAP_FLAG_IN_USE : 0;
  const header: BitmapFileHeader = {
    version: BITMAP_FILE_VERSION,
    flags,
    inUse: options.inUse === true,
    granularity: bitmap.granularity,
    size: bitmap.size,
    generation,
    bitCount: bitmap.bitCount,
    bodyBytes: body.length,
    bodyCrc: crc32(body),
  };
  await writeFileAtomic(path, [encodeHeader(header), body]);
  return header;
}

/** The generation after the existing file's; 1 when there is none or it cannot be read. */
async function nextGeneration(path: string): Promise<number> {
  try {
    return (await readBitmapHeader(path)).generation + 1;
  } catch {
    return 1;
  }
}

/**
 * Sets the in-use flag durably (the header is rewritten in place and fsynced): what a job does
 * before the bitmap in memory starts to differ from the file, so that a crash from then on loads
 * as all dirty. A header is 64 bytes, inside one sector; a torn write fails its checksum and
 * loads as an error, which a caller also treats as all dirty. Returns the new header.
 */
export async function markInUse(path: string): Promise<BitmapFileHeader> {
  return withFile(path, 'r+', async (fh) => {
    const { header } = await readHeader(fh, path);
    const updated: BitmapFileHeader = { ...header, flags: header.flags | BITMAP_FLAG_IN_USE, inUse: true };
    if (!header.inUse) await fh.write(encodeHeader(updated), 0, BITMAP_HEADER_BYTES, 0);
    await fh.sync();
    return updated;
  });
}

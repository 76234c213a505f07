import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadBitmap, readBitmapHeader, saveBitmap, type LoadBitmapOptions, type LoadedBitmap } from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { BitmapError, ErrorCode, type ErrorCodeValue } from '../../src/errors.js';
import { runCli } from '../helpers/cli.js';
import { fuzzParams, fuzzRuns } from '../helpers/fuzz.js';
import { useScratchDir } from '../helpers/scratch.js';

/**
 * Fuzzes the bitmap file loader against a reference reading of docs/bitmap-format.md written here
 * from the document alone: for every file, loadBitmap must give exactly what the document says
 * (the same error code, or the same header and bits), quickly and without allocating for sizes
 * the file does not have.
 */

const scratch = useScratchDir();

const MAGIC = Buffer.from('BMIRDBMP', 'latin1');
const HEADER = 64;
const MAX_BITS = 2 ** 30;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Header field offsets, from the document's table. */
const F = { version: 8, headerBytes: 12, flags: 16, granularity: 20, size: 24, generation: 32, bitCount: 40, bodyBytes: 48, bodyCrc: 56, headerCrc: 60 } as const;
/** A load of a file this small must take less than this (it takes about a millisecond). */
const LOAD_TIME_BOUND_MS = 1000;
/** A load may allocate at most this much more than the file holds (the bitmap it returns, its summary levels, buffers). */
const ALLOCATION_SLACK = 16 * 2 ** 20;

/** A bitmap file as the document lays it out. */
interface FileSpec {
  readonly size: number;
  readonly granularity: number;
  /** Level-0 words, bits past the bit count clear. */
  readonly words: Uint32Array;
  readonly flags: number;
  readonly generation: number;
}

function bitCountOf(size: number, granularity: number): number {
  return Math.ceil(size / granularity);
}

/** Writes a file per the document (not through saveBitmap: a save fsyncs, and this is its model). */
function encode(spec: FileSpec): Buffer {
  const body = Buffer.alloc(spec.words.length * 4);
  spec.words.forEach((w, i) => body.writeUInt32LE(w, i * 4));
  const h = Buffer.alloc(HEADER);
  MAGIC.copy(h, 0);
  h.writeUInt32LE(1, F.version);
  h.writeUInt32LE(HEADER, F.headerBytes);
  h.writeUInt32LE(spec.flags, F.flags);
  h.writeUInt32LE(spec.granularity, F.granularity);
  h.writeBigUInt64LE(BigInt(spec.size), F.size);
  h.writeBigUInt64LE(BigInt(spec.generation), F.generation);
  h.writeBigUInt64LE(BigInt(bitCountOf(spec.size, spec.granularity)), F.bitCount);
  h.writeBigUInt64LE(BigInt(body.length), F.bodyBytes);
  h.writeUInt32LE(crc32(body), F.bodyCrc);
  fixHeaderCrc(h);
  return Buffer.concat([h, body]);
}

function fixHeaderCrc(file: Buffer): void {
  if (file.length >= HEADER) file.writeUInt32LE(crc32(file.subarray(0, F.headerCrc)), F.headerCrc);
}

function fixBodyCrc(file: Buffer): void {
  if (file.length >= HEADER) file.writeUInt32LE(crc32(file.subarray(HEADER)), F.bodyCrc);
}

/** What the document says loading `file` gives. */
type Expected =
  | { readonly code: ErrorCodeValue }
  | { readonly code?: undefined; readonly size: number; readonly granularity: number; readonly generation: number; readonly inUse: boolean; readonly words: Uint32Array };

/** The document's "Loading: checks and error codes", in its order. */
function reference(file: Buffer, options: LoadBitmapOptions = {}): Expected {
  const n = file.length;
  if (n === 0) return { code: ErrorCode.BITMAP_EMPTY };
  const seen = Math.min(n, MAGIC.length);
  if (!file.subarray(0, seen).equals(MAGIC.subarray(0, seen))) return { code: ErrorCode.BITMAP_FOREIGN };
  if (n < F.version + 4) return { code: ErrorCode.BITMAP_TRUNCATED };
  if (file.readUInt32LE(F.version) !== 1) return { code: ErrorCode.BITMAP_VERSION };
  if (n < HEADER) return { code: ErrorCode.BITMAP_TRUNCATED };
  if (crc32(file.subarray(0, F.headerCrc)) !== file.readUInt32LE(F.headerCrc)) return { code: ErrorCode.BITMAP_HEADER_CORRUPT };
  const flags = file.readUInt32LE(F.flags);
  if ((flags & ~1) !== 0) return { code: ErrorCode.BITMAP_VERSION };
  const granularity = file.readUInt32LE(F.granularity);
  const size = file.readBigUInt64LE(F.size);
  const generation = file.readBigUInt64LE(F.generation);
  const bitCountField = file.readBigUInt64LE(F.bitCount);
  const bodyBytesField = file.readBigUInt64LE(F.bodyBytes);
  const granularityOk = granularity >= 512 && granularity <= 2 ** 26 && (granularity & (granularity - 1)) === 0;
  // Sizes past 2^53 - 1 bytes cannot be counted exactly: blockmirror never writes them.
  const bitCount = granularityOk ? (size + BigInt(granularity) - 1n) / BigInt(granularity) : -1n;
  if (
    !granularityOk ||
    size > MAX_SAFE ||
    bitCount > BigInt(MAX_BITS) ||
    file.readUInt32LE(F.headerBytes) !== HEADER ||
    bitCountField !== bitCount ||
    bodyBytesField !== ((bitCount + 31n) / 32n) * 4n ||
    generation > MAX_SAFE
  ) {
    return { code: ErrorCode.BITMAP_HEADER_CORRUPT };
  }
  if ((options.size !== undefined && BigInt(options.size) !== size) || (options.granularity !== undefined && options.granularity !== granularity)) {
    return { code: ErrorCode.BITMAP_GEOMETRY };
  }
  const expectedBytes = BigInt(HEADER) + bodyBytesField;
  if (BigInt(n) < expectedBytes) return { code: ErrorCode.BITMAP_TRUNCATED };
  if (BigInt(n) > expectedBytes) return { code: ErrorCode.BITMAP_CORRUPT };
  const body = file.subarray(HEADER);
  if (crc32(body) !== file.readUInt32LE(F.bodyCrc)) return { code: ErrorCode.BITMAP_CORRUPT };
  const words = new Uint32Array(body.length / 4).map((_, i) => body.readUInt32LE(i * 4));
  const tail = Number(bitCount % 32n);
  if (tail !== 0 && words[words.length - 1]! >>> tail !== 0) return { code: ErrorCode.BITMAP_CORRUPT };
  return { size: Number(size), granularity, generation: Number(generation), inUse: (flags & 1) !== 0, words };
}

/** All bits of a bitmap of `bitCount` bits set, as words. */
function allSet(bitCount: number): Uint32Array {
  const words = new Uint32Array(Math.ceil(bitCount / 32)).fill(0xffffffff);
  if (bitCount % 32 !== 0) words[words.length - 1] = 2 ** (bitCount % 32) - 1;
  return words;
}

interface Attempt {
  readonly loaded?: LoadedBitmap;
  readonly error?: unknown;
  readonly ms: number;
  /** Growth of ArrayBuffer memory over the load (negative when a collection ran meanwhile). */
  readonly allocated: number;
}

async function attemptLoad(path: string, options: LoadBitmapOptions = {}): Promise<Attempt> {
  const before = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  try {
    const loaded = await loadBitmap(path, options);
    return { loaded, ms: performance.now() - t0, allocated: process.memoryUsage().arrayBuffers - before };
  } catch (error) {
    return { error, ms: performance.now() - t0, allocated: process.memoryUsage().arrayBuffers - before };
  }
}

/** Writes `file`, loads it, and checks the outcome against the document's. */
async function expectAsDocumented(path: string, file: Buffer, options: LoadBitmapOptions & { trustInUse?: boolean } = {}): Promise<Expected> {
  await writeFile(path, file);
  const r = await attemptLoad(path, options);
  expect(r.ms).toBeLessThan(LOAD_TIME_BOUND_MS);
  expect(r.allocated).toBeLessThan(ALLOCATION_SLACK + 4 * file.length);
  const expected = reference(file, options);
  if (expected.code !== undefined) {
    expect(r.error, `expected ${expected.code}, loaded ${r.loaded?.bitmap.count()} bits`).toBeInstanceOf(BitmapError);
    expect((r.error as BitmapError).code).toBe(expected.code);
    return expected;
  }
  expect(r.error).toBeUndefined();
  const { bitmap, header, consistent } = r.loaded!;
  expect([bitmap.size, bitmap.granularity, header.generation, header.inUse, consistent]).toEqual([
    expected.size,
    expected.granularity,
    expected.generation,
    expected.inUse,
    !expected.inUse,
  ]);
  const words = expected.inUse && !options.trustInUse ? allSet(bitmap.bitCount) : expected.words;
  expect(Array.from(bitmap.toWords())).toEqual(Array.from(words));
  return expected;
}

// ---- arbitraries ------------------------------------------------------------------------------

/** A geometry with at most a few thousand bits (so a case stays cheap), any power-of-two granularity. */
const geometry = fc.integer({ min: 9, max: 26 }).chain((k) => {
  const granularity = 2 ** k;
  return fc.record({
    granularity: fc.constant(granularity),
    size: fc.oneof(fc.integer({ min: 0, max: granularity * 100 }), fc.integer({ min: 0, max: granularity * 3000 }), fc.constant(0)),
  });
});

/** A valid file: random bits, in use or not, any generation. */
const validSpec: fc.Arbitrary<FileSpec> = geometry.chain(({ size, granularity }) => {
  const bitCount = bitCountOf(size, granularity);
  return fc.record({
    size: fc.constant(size),
    granularity: fc.constant(granularity),
    flags: fc.constantFrom(0, 0, 1),
    generation: fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.maxSafeNat()),
    words: (bitCount === 0 ? fc.constant<number[]>([]) : fc.array(fc.nat(bitCount - 1), { maxLength: 64 })).map((bits) => {
      const words = new Uint32Array(Math.ceil(bitCount / 32));
      for (const b of bits) words[b >>> 5]! |= 1 << (b & 31);
      return words;
    }),
  });
});

/** Values a lying header field might hold: edges of every check, and huge. */
const u64Lie = fc.oneof(
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.constantFrom(0n, 1n, 2n ** 30n, 2n ** 30n + 1n, 2n ** 27n, 2n ** 32n, MAX_SAFE, MAX_SAFE + 1n, 2n ** 63n, 2n ** 64n - 1n),
);
const u32Lie = fc.oneof(
  fc.nat({ max: 2 ** 32 - 1 }),
  fc.integer({ min: 0, max: 31 }).map((k) => 2 ** k),
  fc.constantFrom(0, 1, 511, 513, 2 ** 26 + 1, 2 ** 31, 2 ** 32 - 1),
);

/** A header that lies about its sizes but whose checksum matches: a loader must not believe it into a huge allocation. */
const lyingHeader = fc.tuple(
  validSpec,
  fc.record(
    {
      granularity: u32Lie,
      size: u64Lie,
      bitCount: u64Lie,
      bodyBytes: u64Lie,
      generation: u64Lie,
      headerBytes: u32Lie,
    },
    { requiredKeys: [] },
  ),
  fc.boolean(),
  fc.boolean(),
);

type Mutation =
  | { readonly kind: 'flip'; readonly at: number; readonly bit: number }
  | { readonly kind: 'overwrite'; readonly at: number; readonly value: number }
  | { readonly kind: 'truncate'; readonly at: number }
  | { readonly kind: 'append'; readonly bytes: Uint8Array };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ kind: fc.constant('overwrite' as const), at: fc.nat(), value: fc.nat(255) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
);

function mutate(file: Buffer, m: Mutation): Buffer {
  const out = Buffer.from(file);
  if (m.kind === 'append') return Buffer.concat([out, m.bytes]);
  if (out.length === 0) return out;
  const at = m.at % out.length;
  if (m.kind === 'flip') out[at]! ^= 1 << m.bit;
  else if (m.kind === 'overwrite') out[at] = m.value;
  else return out.subarray(0, at);
  return out;
}

// ---- properties -------------------------------------------------------------------------------

describe('loadBitmap under fuzzing', () => {
  it('the reference encoder writes what saveBitmap writes (so its files are real bitmap files)', async () => {
    const dir = await scratch();
    await fc.assert(
      fc.asyncProperty(validSpec, async (spec) => {
        const bits = DirtyBitmap.create(spec.size, spec.granularity);
        spec.words.forEach((w, i) => {
          for (let b = 0; b < 32; b++) if ((w >>> b) & 1) bits.markBits(i * 32 + b, 1);
        });
        const path = join(dir, 'saved.bmp');
        await saveBitmap(path, bits, { inUse: spec.flags === 1, generation: spec.generation });
        expect((await readFile(path)).equals(encode(spec))).toBe(true);
      }),
      fuzzParams(0.1),
    );
  });

  it('loads every valid file as its bits', async () => {
    const path = join(await scratch(), 'valid.bmp');
    await fc.assert(
      fc.asyncProperty(validSpec, fc.boolean(), async (spec, trustInUse) => {
        const expected = await expectAsDocumented(path, encode(spec), { trustInUse });
        expect(expected.code).toBeUndefined();
      }),
      fuzzParams(1),
    );
  });

  it('gives the documented error for random bytes, with or without a bitmap-like start', async () => {
    const path = join(await scratch(), 'random.bmp');
    const starts = fc.oneof(
      fc.constant(Buffer.alloc(0)),
      fc.constant(MAGIC),
      fc.constant(Buffer.concat([MAGIC, Buffer.from([1, 0, 0, 0])])),
      validSpec.map((s) => encode(s).subarray(0, HEADER)),
    );
    await fc.assert(
      fc.asyncProperty(starts, fc.uint8Array({ maxLength: 160 }), async (start, rest) => {
        await expectAsDocumented(path, Buffer.concat([start, rest]));
      }),
      fuzzParams(2),
    );
  });

  it('never loads a damaged file as a different bitmap: bit flips, overwritten bytes, cuts, extra bytes', async () => {
    const path = join(await scratch(), 'damaged.bmp');
    await fc.assert(
      fc.asyncProperty(validSpec, fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.boolean(), async (spec, mutations, trustInUse) => {
        const original = encode(spec);
        const damaged = mutations.reduce(mutate, original);
        const expected = await expectAsDocumented(path, damaged, { trustInUse });
        // A damaged file loads only if it is the same file, or one whose checksums legitimately match.
        if (expected.code === undefined && !damaged.equals(original)) {
          expect(crc32(damaged.subarray(0, F.headerCrc))).toBe(damaged.readUInt32LE(F.headerCrc));
          expect(crc32(damaged.subarray(HEADER))).toBe(damaged.readUInt32LE(F.bodyCrc));
        }
      }),
      fuzzParams(2),
    );
  });

  it('names where a single flipped bit is: version, body, or the rest of the header', async () => {
    const path = join(await scratch(), 'flip.bmp');
    await fc.assert(
      fc.asyncProperty(validSpec, fc.nat(), fc.nat(7), async (spec, at, bit) => {
        const file = encode(spec);
        const where = at % file.length;
        const damaged = mutate(file, { kind: 'flip', at: where, bit });
        const { code } = await expectAsDocumented(path, damaged);
        if (where < MAGIC.length) expect(code).toBe(ErrorCode.BITMAP_FOREIGN);
        else if (where < F.version + 4) expect(code).toBe(ErrorCode.BITMAP_VERSION);
        else if (where < HEADER) expect(code).toBe(ErrorCode.BITMAP_HEADER_CORRUPT);
        else expect(code).toBe(ErrorCode.BITMAP_CORRUPT);
      }),
      fuzzParams(2),
    );
  });

  it('refuses a file cut at every length', async () => {
    const path = join(await scratch(), 'cut.bmp');
    await fc.assert(
      fc.asyncProperty(validSpec, async (spec) => {
        const file = encode(spec);
        for (let length = 0; length < file.length; length++) {
          const { code } = await expectAsDocumented(path, file.subarray(0, length));
          expect(code).toBe(length === 0 ? ErrorCode.BITMAP_EMPTY : ErrorCode.BITMAP_TRUNCATED);
        }
      }),
      fuzzParams(0.03),
    );
  });

  it('checks lying sizes, granularities and offsets against the file before allocating anything for them', async () => {
    const path = join(await scratch(), 'lying.bmp');
    await fc.assert(
      fc.asyncProperty(lyingHeader, async ([spec, lies, fixBody, fixHeader]) => {
        const file = encode(spec);
        if (lies.granularity !== undefined) file.writeUInt32LE(lies.granularity, F.granularity);
        if (lies.headerBytes !== undefined) file.writeUInt32LE(lies.headerBytes, F.headerBytes);
        if (lies.size !== undefined) file.writeBigUInt64LE(lies.size, F.size);
        if (lies.bitCount !== undefined) file.writeBigUInt64LE(lies.bitCount, F.bitCount);
        if (lies.bodyBytes !== undefined) file.writeBigUInt64LE(lies.bodyBytes, F.bodyBytes);
        if (lies.generation !== undefined) file.writeBigUInt64LE(lies.generation, F.generation);
        if (fixBody) fixBodyCrc(file);
        if (fixHeader) fixHeaderCrc(file);
        await expectAsDocumented(path, file, { trustInUse: true });
      }),
      fuzzParams(2),
    );
  });

  it('refuses a consistent header for a huge bitmap on a small file without allocating its body', async () => {
    const path = join(await scratch(), 'huge.bmp');
    // The most bits a file may have, every field agreeing, checksums right: only the file's size tells.
    const lies = fc.record({
      granularity: fc.integer({ min: 9, max: 26 }).map((k) => 2 ** k),
      bits: fc.oneof(fc.constant(MAX_BITS), fc.integer({ min: 2 ** 24, max: MAX_BITS })),
      bodyKept: fc.nat({ max: 4096 }),
    });
    await fc.assert(
      fc.asyncProperty(lies, async ({ granularity, bits, bodyKept }) => {
        const size = Math.min(Number.MAX_SAFE_INTEGER, bits * granularity);
        const bitCount = bitCountOf(size, granularity);
        const bodyBytes = Math.ceil(bitCount / 32) * 4;
        const file = Buffer.alloc(HEADER + Math.min(bodyKept, bodyBytes));
        MAGIC.copy(file, 0);
        file.writeUInt32LE(1, F.version);
        file.writeUInt32LE(HEADER, F.headerBytes);
        file.writeUInt32LE(granularity, F.granularity);
        file.writeBigUInt64LE(BigInt(size), F.size);
        file.writeBigUInt64LE(1n, F.generation);
        file.writeBigUInt64LE(BigInt(bitCount), F.bitCount);
        file.writeBigUInt64LE(BigInt(bodyBytes), F.bodyBytes);
        fixBodyCrc(file);
        fixHeaderCrc(file);
        const { code } = await expectAsDocumented(path, file);
        expect(code).toBe(ErrorCode.BITMAP_TRUNCATED);
      }),
      fuzzParams(0.2),
    );
  });

  it('refuses a valid file for another geometry than the caller expects', async () => {
    const path = join(await scratch(), 'geometry.bmp');
    await fc.assert(
      fc.asyncProperty(
        validSpec,
        fc.option(fc.maxSafeNat(), { nil: undefined }),
        fc.option(fc.integer({ min: 9, max: 26 }).map((k) => 2 ** k), { nil: undefined }),
        async (spec, size, granularity) => {
          await expectAsDocumented(path, encode(spec), { size, granularity });
        },
      ),
      fuzzParams(1),
    );
  });

  it('reads the header of any file as the document says, or refuses it with the documented code', async () => {
    const path = join(await scratch(), 'header.bmp');
    await fc.assert(
      fc.asyncProperty(validSpec, fc.array(mutation, { maxLength: 3 }), async (spec, mutations) => {
        const file = mutations.reduce(mutate, encode(spec));
        await writeFile(path, file);
        const expected = reference(file);
        const headerOnly = [ErrorCode.BITMAP_EMPTY, ErrorCode.BITMAP_FOREIGN, ErrorCode.BITMAP_VERSION, ErrorCode.BITMAP_HEADER_CORRUPT] as string[];
        const headerTruncated = expected.code === ErrorCode.BITMAP_TRUNCATED && file.length < HEADER;
        const outcome = await readBitmapHeader(path).then(
          (h) => ({ header: h }),
          (error: unknown) => ({ error }),
        );
        if (expected.code !== undefined && (headerOnly.includes(expected.code) || headerTruncated)) {
          expect(outcome).toMatchObject({ error: { code: expected.code } });
        } else {
          expect(outcome).toHaveProperty('header');
        }
      }),
      fuzzParams(1),
    );
  });
});

describe('blockmirror bitmap info on damaged files', () => {
  beforeAll(async () => {
    // The CLI cases run the built command line: it must exist (npm test builds it).
    await stat(join(import.meta.dirname, '../../dist/cli/bin.js'));
  });

  it('exits 2 with a message naming the error code', async () => {
    const dir = await scratch();
    const path = join(dir, 'info.bmp');
    await fc.assert(
      fc.asyncProperty(validSpec, mutation, async (spec, m) => {
        const file = mutate(encode(spec), m);
        const expected = reference(file, { trustInUse: true });
        fc.pre(expected.code !== undefined);
        await writeFile(path, file);
        const run = await runCli(['bitmap', 'info', path]);
        expect(run.code, run.stderr).toBe(2);
        expect(run.stderr).toMatch(new RegExp(`^blockmirror: ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: .+ \\[${expected.code}\\]\\n$`));
        expect(run.stdout).toBe('');
      }),
      // Each case starts a process: a few, however long the fuzz run.
      { ...fuzzParams(0.04), numRuns: Math.min(8, fuzzRuns(0.04)), endOnFailure: true },
    );
  });

  it('with --json prints an error event carrying the code', async () => {
    const path = join(await scratch(), 'info.bmp');
    const file = encode({ size: 1 << 20, granularity: 65536, words: new Uint32Array(1), flags: 0, generation: 1 });
    file[HEADER]! ^= 0x01;
    await writeFile(path, file);
    const run = await runCli(['bitmap', 'info', '--json', path]);
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout.trim())).toMatchObject({ event: 'error', code: ErrorCode.BITMAP_CORRUPT });
    expect(run.stderr).toContain(`[${ErrorCode.BITMAP_CORRUPT}]`);
  });
});

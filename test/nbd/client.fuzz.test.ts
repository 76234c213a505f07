/**
 * Fuzzing our NBD client against a fake server that answers its handshake and requests validly,
 * except where fast-check spoils an answer: random bytes, flipped bits, truncation, option
 * replies and reply chunks with bad magic, wrong cookies, lying or huge lengths, block status
 * with garbage extents. Each case: every call settles in time, with success or a typed error of
 * the documented codes, memory stays bounded, no connection is left open, and an unspoiled
 * script gives correct data.
 */
import fc from 'fast-check';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlockmirrorError, DeviceError, ErrorCode, IoError, NbdError } from '../../src/errors.js';
import { listNbdExports } from '../../src/io/nbd/NbdClientHandshake.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { parseNbdUri } from '../../src/io/nbd/NbdUri.js';
import {
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  u16,
  u32,
} from '../../src/io/nbd/protocol.js';
import { fuzzParams } from '../helpers/fuzz.js';
import { useScratchDir } from '../helpers/scratch.js';
import { FakeNbdServer, type ChunkSpec, type Mutation, type OptionReplySpec, type Script, type Spoil } from './FakeNbdServer.js';
import { FUZZ_TEST_TIMEOUT_MS, HeapWatch, within } from './nbdFuzz.js';

const scratch = useScratchDir();
const KiB = 1024;
const CLIENT_CODES: readonly string[] = [ErrorCode.NBD_PROTOCOL, ErrorCode.NBD_CONNECTION, ErrorCode.NBD_UNSUPPORTED, ErrorCode.NBD_NO_EXPORT];

const u32Any = fc.integer({ min: 0, max: 0xffff_ffff });
const lying = (exactWeight = 4): fc.Arbitrary<'exact' | number> =>
  fc.oneof(
    { weight: exactWeight, arbitrary: fc.constant('exact' as const) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: 64 }) },
    { weight: 1, arbitrary: fc.constantFrom(0xffff_ffff, 0x8000_0000, 16 << 20, (16 << 20) + 1, 1 << 20) },
    { weight: 1, arbitrary: u32Any },
  );

/** Block status payloads: right or wrong context, extents of any length (zero too) and flags. */
const extentsPayload = fc
  .tuple(fc.oneof(fc.constant(7), u32Any), fc.array(fc.tuple(fc.oneof(fc.integer({ min: 0, max: 128 * KiB }), u32Any), u32Any), { maxLength: 6 }), fc.uint8Array({ maxLength: 3 }))
  .map(([ctx, extents, tail]) => Buffer.concat([u32(ctx), ...extents.flatMap(([l, f]) => [u32(l), u32(f)]), tail]));

const chunkArb: fc.Arbitrary<ChunkSpec> = fc.record({
  magic: fc.oneof({ weight: 6, arbitrary: fc.constant('structured' as const) }, { weight: 2, arbitrary: fc.constant('simple' as const) }, { weight: 1, arbitrary: u32Any }),
  flags: fc.oneof(fc.constantFrom(NBD_REPLY_FLAG_DONE, 0), fc.integer({ min: 0, max: 0xffff })),
  type: fc.oneof(
    {
      weight: 6,
      arbitrary: fc.constantFrom(
        NBD_REPLY_TYPE_NONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        NBD_REPLY_TYPE_OFFSET_HOLE,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        NBD_REPLY_TYPE_ERROR,
        NBD_REPLY_TYPE_ERROR_OFFSET,
      ),
    },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
  ),
  cookie: fc.oneof({ weight: 6, arbitrary: fc.constant('echo' as const) }, { weight: 1, arbitrary: fc.constantFrom('next' as const, 'high' as const) }, { weight: 1, arbitrary: u32Any }),
  length: lying(),
  payload: fc.oneof(
    fc.uint8Array({ maxLength: 48 }),
    extentsPayload,
    // An offset (near the requests') followed by data, or an error value and message.
    fc.tuple(fc.integer({ min: 0, max: 16 }), fc.uint8Array({ maxLength: 40 })).map(([k, rest]) => Buffer.concat([Buffer.alloc(4), u32(k * 4096), rest])),
    fc.tuple(u32Any, fc.integer({ min: 0, max: 40 }), fc.string({ maxLength: 20 })).map(([e, n, s]) => Buffer.concat([u32(e), u16(n), Buffer.from(s)])),
  ),
});

/** NBD_REP_INFO bodies (real info types with lying sizes), or anything. */
const infoData = fc.oneof(
  fc.tuple(fc.constantFrom(NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, 1, 9), fc.uint8Array({ maxLength: 16 })).map(([t, rest]) => Buffer.concat([u16(t), rest])),
  fc
    .tuple(fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 20n }), fc.bigInt({ min: 2n ** 53n - 2n, max: 2n ** 64n - 1n })), fc.integer({ min: 0, max: 0xffff }))
    .map(([size, flags]) => {
      const b = Buffer.alloc(12);
      b.writeUInt16BE(NBD_INFO_EXPORT, 0);
      b.writeBigUInt64BE(size, 2);
      b.writeUInt16BE(flags, 10);
      return b;
    }),
  fc.tuple(u32Any, u32Any, u32Any).map(([a, b, c]) => Buffer.concat([u16(NBD_INFO_BLOCK_SIZE), u32(a), u32(b), u32(c)])),
  fc.uint8Array({ maxLength: 48 }),
);

const optionReplyArb: fc.Arbitrary<OptionReplySpec> = fc.record({
  magic: fc.oneof({ weight: 8, arbitrary: fc.constant('valid' as const) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  option: fc.oneof({ weight: 8, arbitrary: fc.constant('echo' as const) }, { weight: 1, arbitrary: u32Any }),
  type: fc.oneof(
    {
      weight: 6,
      arbitrary: fc.constantFrom(
        NBD_REP_ACK,
        NBD_REP_SERVER,
        NBD_REP_INFO,
        NBD_REP_META_CONTEXT,
        NBD_REP_ERR_UNSUP,
        NBD_REP_ERR_POLICY,
        NBD_REP_ERR_INVALID,
        NBD_REP_ERR_TLS_REQD,
        NBD_REP_ERR_UNKNOWN,
        NBD_REP_ERR_SHUTDOWN,
      ),
    },
    { weight: 1, arbitrary: u32Any },
  ),
  length: lying(6),
  data: fc.oneof(infoData, fc.tuple(u32Any, fc.string({ maxLength: 20 })).map(([n, s]) => Buffer.concat([u32(n), Buffer.from(s)]))),
});

const spoilArb: fc.Arbitrary<Spoil> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), positions: fc.array(fc.nat(), { minLength: 1, maxLength: 3 }) }),
  fc.record({ kind: fc.constant('truncate' as const), keep: fc.nat() }),
  fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 64 }), thenClose: fc.boolean() }),
  fc.record({ kind: fc.constant('chunk' as const), chunk: chunkArb, alsoValid: fc.boolean() }),
  fc.record({ kind: fc.constant('optionReply' as const), reply: optionReplyArb, alsoValid: fc.boolean() }),
  fc.record({
    kind: fc.constant('greeting' as const),
    second: fc.oneof(fc.constant(0n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constant(0x49484156454f5054n)),
    flags: fc.integer({ min: 0, max: 0xffff }),
  }),
  fc.constant({ kind: 'close' as const }),
  fc.record({
    kind: fc.constant('export' as const),
    size: fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 20n }), fc.bigInt({ min: 2n ** 53n - 2n, max: 2n ** 64n - 1n }), fc.constant(256n * 1024n)),
    flags: fc.oneof(fc.constant(0x16d), fc.integer({ min: 0, max: 0xffff })),
    sizes: fc.option(
      fc.tuple(
        fc.oneof(fc.constantFrom(1, 512, 4096, 65536, 131072), u32Any),
        fc.oneof(fc.constantFrom(4096, 2 ** 31), u32Any),
        fc.oneof(fc.constantFrom(512, 4096, 65536, 0xffff_ffff, 1), u32Any),
      ),
      { nil: undefined },
    ),
  }),
);

/** Answers 0-4 are the handshake (greeting, flags, STRUCTURED_REPLY, SET_META_CONTEXT, GO); the rest requests. */
const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  at: fc.oneof(fc.integer({ min: 0, max: 4 }), fc.constant(4), fc.integer({ min: 5, max: 14 })),
  spoil: spoilArb,
});

const scriptArb: fc.Arbitrary<Script> = fc.record({
  size: fc.oneof({ weight: 6, arbitrary: fc.constant(256 * KiB) }, { weight: 1, arbitrary: fc.constantFrom(0, 4096, 256 * KiB + 1) }),
  minBlock: fc.constantFrom(1, 1, 512, 4096),
  maxBlock: fc.constantFrom(64 * KiB, 32 << 20, 0xffff_ffff, 8192),
  multiConn: fc.boolean(),
  contextId: fc.constant(7),
  splitReads: fc.boolean(),
  mutations: fc.oneof({ weight: 1, arbitrary: fc.constant([]) }, { weight: 6, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) }),
});

const caseArb = fc.record({ script: scriptArb, listing: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }) });

/** A failure the client may report: a typed error of a documented code. */
function expectAllowed(err: unknown, what: string): void {
  expect(err, `${what}: ${(err as Error)?.stack ?? String(err)}`).toBeInstanceOf(BlockmirrorError);
  if (err instanceof NbdError) return void expect(CLIENT_CODES, `${what}: ${err.message}`).toContain(err.code);
  if (err instanceof DeviceError) return void expect(err.code, `${what}: ${err.message}`).toBe(ErrorCode.TARGET_READ_ONLY);
  expect(err, `${what}: ${(err as Error).message}`).toBeInstanceOf(IoError);
  // An I/O call fails with IoError: for a broken or lost connection its cause says which.
  const cause = (err as IoError).cause;
  if (cause !== undefined) {
    expect(cause, `${what}: cause of ${(err as Error).message}`).toBeInstanceOf(NbdError);
    expect(CLIENT_CODES).toContain((cause as NbdError).code);
  }
}

interface Outcome {
  readonly ok: boolean;
}

/** Runs a call, recording success or checking its failure is allowed. */
async function attempt<T>(what: string, call: () => Promise<T>): Promise<Outcome & { value?: T }> {
  try {
    return { ok: true, value: await call() };
  } catch (err) {
    expectAllowed(err, what);
    return { ok: false };
  }
}

/** The device session one case runs: open, read, write, read back, block status, zero, trim, flush, close. */
async function session(uri: string, fake: FakeNbdServer, script: Script): Promise<boolean> {
  const opened = await attempt('open', () =>
    NbdDevice.open({ kind: 'nbd', uri, writable: true }, { connections: 2, autoReconnect: false, allocation: true, handshakeTimeoutMs: 2000 }),
  );
  if (!opened.ok) return false;
  const dev = opened.value!;
  // What the device says about the export is exact and usable, whatever the server claimed.
  expect(Number.isSafeInteger(dev.size), `size ${dev.size}`).toBe(true);
  expect(dev.blockSize).toBeGreaterThanOrEqual(1);
  expect(dev.maxRequest, `maxRequest ${dev.maxRequest}, blockSize ${dev.blockSize}`).toBeGreaterThanOrEqual(dev.blockSize);
  expect(dev.maxRequest % dev.blockSize).toBe(0);
  let allOk = true;
  const step = async (what: string, call: () => Promise<void>): Promise<void> => {
    const r = await attempt(what, call);
    allOk &&= r.ok;
  };
  const a = Buffer.alloc(4096);
  const b = Buffer.alloc(4096);
  // Two at once, so cookies are answered while another request is in flight.
  await Promise.all([step('read a', () => dev.read(a, 0)), step('read b', () => dev.read(b, 12 * KiB))]);
  const pattern = Buffer.alloc(4096, 0x5a);
  await step('write', () => dev.write(pattern, 8 * KiB));
  const back = Buffer.alloc(4096);
  await step('read back', () => dev.read(back, 8 * KiB));
  let extents: readonly { length: number }[] = [];
  await step('block status', async () => void (extents = await dev.blockStatus(0, 64 * KiB)));
  await step('write zeroes', () => dev.writeZeroes(16 * KiB, 8192));
  await step('discard', () => dev.discard(32 * KiB, 8192));
  await step('flush', () => dev.flush());
  await step('close', () => dev.close());
  if (allOk && script.mutations.length === 0) {
    // Nothing was spoiled: the data must be right.
    const expected = (at: number): Buffer => {
      const e = Buffer.alloc(4096);
      for (let i = 0; i < e.length; i++) e[i] = ((at + i) * 13 + 5) & 0xff;
      return e;
    };
    expect(a.equals(expected(0))).toBe(true);
    expect(b.equals(expected(12 * KiB))).toBe(true);
    expect(back.equals(pattern)).toBe(true);
    expect(extents.length).toBeGreaterThan(0);
    expect(fake.data.subarray(16 * KiB, 24 * KiB).every((x) => x === 0)).toBe(true);
  }
  return allOk;
}

describe('NBD client against a fuzzed server', () => {
  it('settles every call in time with success or a typed error, holds bounded memory, and leaves no connection open', async () => {
    const path = join(await scratch(), 'fake.sock');
    const fake = new FakeNbdServer();
    await fake.listen(path);
    const uri = `nbd+unix:///disk?socket=${path}`;
    // 32 MiB of it may be NbdDevice's shared zero buffer, made once for a server without WRITE_ZEROES.
    const heap = new HeapWatch(96 << 20);
    let succeeded = 0;
    try {
      await fc.assert(
        fc.asyncProperty(caseArb, async ({ script, listing }) => {
          fake.use(script);
          if (listing) {
            const r = await within(5000, 'listNbdExports', attempt('list', () => listNbdExports(parseNbdUri(uri), { handshakeTimeoutMs: 2000 })));
            if (r.ok && script.mutations.length === 0) expect(r.value).toEqual([{ name: 'disk', description: 'a fake disk' }]);
          } else if (await within(8000, 'a client session', session(uri, fake, script))) {
            succeeded++;
          }
          // Whatever happened, the client let go of its connections.
          const deadline = Date.now() + 3000;
          while (fake.connections > 0) {
            if (Date.now() > deadline) throw new Error(`${fake.connections} connection(s) left open by the client`);
            await new Promise((r) => setTimeout(r, 2));
          }
          heap.check();
        }),
        fuzzParams(4),
      );
    } finally {
      await fake.close();
    }
    expect(succeeded).toBeGreaterThan(0);
  }, FUZZ_TEST_TIMEOUT_MS);
});

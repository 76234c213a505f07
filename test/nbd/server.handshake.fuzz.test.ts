/**
 * Fuzzing the NBD server's handshake: random bytes, and mutations of a valid handshake (valid
 * client flags then random options; valid option headers with random lengths and payloads;
 * GO/INFO/LIST/STRUCTURED_REPLY/SET_META_CONTEXT carrying garbage). Each case runs on a fresh
 * connection and must end with the server answering or closing in time, memory bounded, every
 * reported error typed, and a well-behaved client (ours; now and then the real nbdinfo) served.
 */
import fc from 'fast-check';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdServer } from '../../src/io/nbd/NbdServer.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REQUEST_MAGIC,
  u16,
  u32,
} from '../../src/io/nbd/protocol.js';
import { fuzzParams, peerBytes } from '../helpers/fuzz.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';
import { useScratchDir } from '../helpers/scratch.js';
import { exchange, expectTypedClientErrors, FUZZ_TEST_TIMEOUT_MS, haveNbdinfo, HeapWatch, nbdinfoSees, sessionsEnd, stillServes } from './nbdFuzz.js';

const scratch = useScratchDir();
const SIZE = 256 * 1024;

const KNOWN_OPTIONS = [
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_INFO,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
];
const NAMES = ['', 'disk', 'ro', 'nope', 'disk\u0000', '\u00ff\u00fe'];

const u32Any = fc.integer({ min: 0, max: 0xffff_ffff });
/** A length field: mostly the true one, sometimes off by a little, sometimes anything. */
const lengthOf = (actual: number): fc.Arbitrary<number> =>
  fc.oneof(
    { weight: 6, arbitrary: fc.constant(actual) },
    { weight: 2, arbitrary: fc.integer({ min: -8, max: 8 }).map((d) => Math.max(0, actual + d)) },
    { weight: 1, arbitrary: u32Any },
  );

const nameBytes = fc.oneof(fc.constantFrom(...NAMES).map((n) => Buffer.from(n, 'utf8')), fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)));

/** NBD_OPT_GO/INFO data: name length, name, request count, requests, each possibly lying. */
const goData = fc
  .record({ name: nameBytes, requests: fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 6 }), trailer: fc.uint8Array({ maxLength: 4 }) })
  .chain(({ name, requests, trailer }) =>
    fc.tuple(lengthOf(name.length), fc.oneof(fc.constant(requests.length), fc.integer({ min: 0, max: 0xffff }))).map(([nameLength, count]) =>
      Buffer.concat([u32(nameLength), name, u16(count), ...requests.map(u16), trailer]),
    ),
  );

/** LIST/SET_META_CONTEXT data: export name, query count, queries, each possibly lying. */
const metaData = fc
  .record({
    name: nameBytes,
    queries: fc.array(fc.oneof(fc.constantFrom('base:allocation', 'base:', 'qemu:dirty-bitmap:x', ''), fc.string({ maxLength: 20 })), { maxLength: 4 }),
  })
  .chain(({ name, queries }) =>
    fc
      .tuple(lengthOf(name.length), fc.oneof(fc.constant(queries.length), u32Any), fc.array(fc.boolean(), { minLength: queries.length, maxLength: queries.length }))
      .map(([nameLength, count, lie]) =>
        Buffer.concat([
          u32(nameLength),
          name,
          u32(count),
          ...queries.flatMap((q, i) => {
            const b = Buffer.from(q, 'utf8');
            return [u32(lie[i] ? b.length + 3 : b.length), b];
          }),
        ]),
      ),
  );

const optionData = fc.oneof(
  fc.constant(Buffer.alloc(0)),
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  goData,
  metaData,
);

/** One option request: magic (rarely wrong), option (known or anything), data, and a length field that may lie. */
const optionMessage = fc
  .record({
    badMagic: fc.oneof({ weight: 12, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
    option: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...KNOWN_OPTIONS) }, { weight: 1, arbitrary: u32Any }),
    data: optionData,
  })
  .chain(({ badMagic, option, data }) =>
    lengthOf(data.length).map((length) => {
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(badMagic ?? NBD_OPTS_MAGIC, 0);
      h.writeUInt32BE(option, 8);
      h.writeUInt32BE(length, 12);
      return Buffer.concat([h, data]);
    }),
  );

const clientFlags = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, 0) },
  { weight: 1, arbitrary: u32Any },
);

/** A request header, so a case that reaches transmission also sends something there. */
const someRequest = fc.tuple(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 4 * SIZE }), fc.integer({ min: 0, max: 8192 })).map(([command, offset, length]) => {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  h.writeUInt16BE(command, 6);
  h.writeUInt32BE(7, 12);
  h.writeUInt32BE(offset, 20);
  h.writeUInt32BE(length, 24);
  return h;
});

/** A whole case: what the client sends on its fresh connection, and how it leaves. */
const handshakeCase = fc.record({
  bytes: fc.oneof(
    { weight: 1, arbitrary: peerBytes(256, [u32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES), u32(NBD_FLAG_C_FIXED_NEWSTYLE)]).map((b) => Buffer.from(b)) },
    {
      weight: 4,
      arbitrary: fc
        .tuple(clientFlags, fc.array(optionMessage, { maxLength: 6 }), fc.array(someRequest, { maxLength: 2 }), fc.uint8Array({ maxLength: 32 }))
        .map(([flags, options, requests, tail]) => Buffer.concat([u32(flags), ...options, ...requests, tail])),
    },
  ),
  ending: fc.constantFrom<'end' | 'destroy'>('end', 'end', 'end', 'destroy'),
  pieces: fc.integer({ min: 1, max: 4 }),
});

describe('NBD server handshake under fuzzed input', () => {
  it('answers or closes in time, holds bounded memory, reports typed errors, and keeps serving', async () => {
    const socket = join(await scratch(), 'h.sock');
    const disk = new MemoryDevice(SIZE, { maxRequest: 64 * 1024 });
    const errors: Error[] = [];
    const server = new NbdServer({
      exports: [
        { name: 'disk', device: disk, description: 'fuzzed' },
        { name: 'ro', device: new MemoryDevice(64 * 1024), readOnly: true },
      ],
      defaultExport: 'disk',
      handshakeTimeoutMs: 2000,
      onClientError: (err) => errors.push(err),
    });
    await server.listen(`nbd+unix:///?socket=${socket}`);
    const uri = `nbd+unix:///disk?socket=${socket}`;
    const heap = new HeapWatch(32 << 20);
    let n = 0;
    let nbdinfoRuns = 0;
    if (!haveNbdinfo) console.warn('[nbd fuzz] skipping the nbdinfo checks: nbdinfo is not installed (apt-get install libnbd-bin)');
    try {
      await fc.assert(
        fc.asyncProperty(handshakeCase, async ({ bytes, ending, pieces }) => {
          n++;
          errors.length = 0;
          await exchange(socket, bytes, { ending, pieces, closeWithinMs: 3000 });
          await sessionsEnd(server);
          expectTypedClientErrors(errors);
          await stillServes(uri, SIZE, n);
          if (haveNbdinfo && n % 40 === 1) {
            nbdinfoRuns++;
            await nbdinfoSees(uri, SIZE);
          }
          heap.check();
        }),
        fuzzParams(3),
      );
    } finally {
      await server.close();
    }
    expect(server.clients).toBe(0);
    if (haveNbdinfo) expect(nbdinfoRuns).toBeGreaterThan(0);
  }, FUZZ_TEST_TIMEOUT_MS);
});

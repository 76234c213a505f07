/**
 * Fuzzing the NBD server's transmission phase: after a valid handshake, random request streams
 * (random magic, flags, commands, offsets and lengths; valid requests out of range or over the
 * maximum; writes with short payloads), interleaved with valid requests. A model written from
 * proto.md says what each request deserves: every valid one a correct reply (reads checked
 * against a shadow of the valid writes), every bad one an error reply, or a disconnect where
 * the protocol allows one. At the end the devices must equal their shadows, and the server must
 * still serve another client.
 */
import fc from 'fast-check';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdServer } from '../../src/io/nbd/NbdServer.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ERRNO,
  NBD_MAX_SAFE_PAYLOAD,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  readUInt64,
  u32,
} from '../../src/io/nbd/protocol.js';
import { fuzzParams } from '../helpers/fuzz.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';
import { RawNbdClient, type TransmissionReply } from '../helpers/RawNbdClient.js';
import { useScratchDir } from '../helpers/scratch.js';
import { expectTypedClientErrors, FUZZ_TEST_TIMEOUT_MS, HeapWatch, sessionsEnd, stillServes, within } from './nbdFuzz.js';

const scratch = useScratchDir();
const KiB = 1024;
const MAX_REQUEST = 64 * KiB;

/** One export under test, as the model sees it. */
interface Target {
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly minBlock: number;
  readonly device: MemoryDevice;
  /** What the device must hold: its first contents plus every valid write. */
  readonly shadow: Buffer;
}

/** A request as the fuzzer sends it. */
interface Req {
  readonly flags: number;
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** Seed of a WRITE's payload (its bytes are a pattern of it, to keep cases small). */
  readonly fill: number;
}

/** How a case's stream ends. */
type Ending =
  | { readonly kind: 'disc' }
  | { readonly kind: 'badMagic'; readonly magic: number }
  | { readonly kind: 'hugeWrite'; readonly length: number }
  | { readonly kind: 'shortWrite'; readonly offset: number; readonly sent: number }
  | { readonly kind: 'end' };

const COMMANDS = [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS];

function payloadOf(req: Req): Buffer {
  const b = Buffer.allocUnsafe(req.length);
  for (let i = 0; i < b.length; i++) b[i] = (req.fill + i * 7) & 0xff;
  return b;
}

/** Offsets: anywhere inside, near the end, past it, or absurd. */
const offsetArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 256 * KiB }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 512 }).map((k) => k * 512) },
  { weight: 1, arbitrary: fc.integer({ min: -4096, max: 4096 }).map((d) => Math.max(0, 256 * KiB + d)) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 32, 2 ** 52, 2 ** 63, 2 ** 64 - 2 ** 12) },
);
/** Lengths: small, aligned, just over the maximum, or absurd (kept sendable for writes by the caller). */
const lengthArb = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 8 * KiB }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 128 }).map((k) => k * 512) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_REQUEST - 2, max: 4 * MAX_REQUEST }) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 31, 2 ** 32 - 1) },
);
const flagsArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant(0) },
  { weight: 3, arbitrary: fc.constantFrom(NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_FAST_ZERO) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);
const commandArb = fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...COMMANDS) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) });

const reqArb: fc.Arbitrary<Req> = fc
  .record({ flags: flagsArb, command: commandArb, offset: offsetArb, length: lengthArb, fill: fc.integer({ min: 0, max: 255 }) })
  // A write's payload is sent in full, so the stream stays in step: keep those lengths sendable.
  .map((r) => (r.command === NBD_CMD_WRITE && r.length > 4 * MAX_REQUEST ? { ...r, length: r.length % (4 * MAX_REQUEST) } : r))
  .filter((r) => r.command !== NBD_CMD_DISC);

const endingArb: fc.Arbitrary<Ending> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ kind: 'disc' as const }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }).filter((m) => m !== 0x25609513).map((magic) => ({ kind: 'badMagic' as const, magic })) },
  { weight: 1, arbitrary: fc.integer({ min: NBD_MAX_SAFE_PAYLOAD + 1, max: 0xffff_ffff }).map((length) => ({ kind: 'hugeWrite' as const, length })) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: 4095 })).map(([k, sent]) => ({ kind: 'shortWrite' as const, offset: k * 512, sent })),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'end' as const }) },
);

const caseArb = fc.record({
  target: fc.integer({ min: 0, max: 2 }),
  structured: fc.boolean(),
  meta: fc.boolean(),
  requests: fc.array(reqArb, { maxLength: 14 }),
  ending: endingArb,
});

/** What the protocol says a request deserves: undefined (success) or the error values it may get. */
function verdict(t: Target, structured: boolean, meta: boolean, r: Req): number[] | undefined {
  const errors = new Set<number>();
  const known = COMMANDS.includes(r.command);
  if (!known) return [NBD_ERRNO.EINVAL]; // includes NBD_CMD_CACHE: not advertised
  const writes = r.command === NBD_CMD_WRITE || r.command === NBD_CMD_WRITE_ZEROES || r.command === NBD_CMD_TRIM;
  let allowed = NBD_CMD_FLAG_FUA;
  if (r.command === NBD_CMD_READ && structured) allowed |= NBD_CMD_FLAG_DF;
  if (r.command === NBD_CMD_WRITE_ZEROES) allowed |= NBD_CMD_FLAG_NO_HOLE;
  if (r.command === NBD_CMD_BLOCK_STATUS) allowed |= NBD_CMD_FLAG_REQ_ONE;
  if (r.flags & ~allowed) errors.add(NBD_ERRNO.EINVAL); // FAST_ZERO is not offered either
  if (writes && t.readOnly) errors.add(NBD_ERRNO.EPERM);
  if (r.command === NBD_CMD_BLOCK_STATUS && (!structured || !meta)) errors.add(NBD_ERRNO.EINVAL);
  if (r.command !== NBD_CMD_FLUSH) {
    if (r.offset + r.length > t.size) errors.add(NBD_ERRNO.EINVAL).add(NBD_ERRNO.ENOSPC);
    const sizeLimited = r.command === NBD_CMD_READ || r.command === NBD_CMD_WRITE || r.command === NBD_CMD_WRITE_ZEROES;
    if (sizeLimited && r.length > MAX_REQUEST) errors.add(NBD_ERRNO.EINVAL).add(NBD_ERRNO.EOVERFLOW);
    if (t.minBlock > 1 && (r.offset % t.minBlock !== 0 || r.length % t.minBlock !== 0)) errors.add(NBD_ERRNO.EINVAL);
    if (r.command === NBD_CMD_BLOCK_STATUS && r.length === 0) errors.add(NBD_ERRNO.EINVAL);
  }
  return errors.size > 0 ? [...errors] : undefined;
}

/** Changes the shadow as a successful request changes the device. */
function apply(t: Target, r: Req): void {
  if (r.command === NBD_CMD_WRITE) payloadOf(r).copy(t.shadow, r.offset);
  if (r.command === NBD_CMD_WRITE_ZEROES) t.shadow.fill(0, r.offset, r.offset + r.length);
}

function mutates(r: Req): boolean {
  return r.command === NBD_CMD_WRITE || r.command === NBD_CMD_WRITE_ZEROES;
}

function overlaps(a: Req, b: Req): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/**
 * Splits requests into batches sent back to back: the server may run the requests in flight in
 * any order, so a batch holds no valid write overlapping anything else in it.
 */
function batches(t: Target, structured: boolean, meta: boolean, reqs: readonly Req[]): Req[][] {
  const out: Req[][] = [[]];
  for (const r of reqs) {
    const valid = verdict(t, structured, meta, r) === undefined;
    const batch = out[out.length - 1]!;
    const clash = batch.some((o) => {
      const oValid = verdict(t, structured, meta, o) === undefined;
      return ((valid && mutates(r)) || (oValid && mutates(o))) && overlaps(o, r);
    });
    if (clash) out.push([r]);
    else batch.push(r);
  }
  return out;
}

async function handshake(c: RawNbdClient, t: Target, structured: boolean, meta: boolean): Promise<void> {
  await c.greet();
  if (structured) {
    c.option(NBD_OPT_STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(NBD_REP_ACK);
    if (meta) {
      const q = Buffer.from('base:allocation');
      const n = Buffer.from(t.name);
      c.option(NBD_OPT_SET_META_CONTEXT, Buffer.concat([u32(n.length), n, u32(1), u32(q.length), q]));
      expect((await c.optionReply()).type).toBe(NBD_REP_META_CONTEXT);
      expect((await c.optionReply()).type).toBe(NBD_REP_ACK);
    }
  }
  const n = Buffer.from(t.name);
  c.option(NBD_OPT_GO, Buffer.concat([u32(n.length), n, Buffer.from([0, 1, 0, 3])]));
  for (let r = await c.optionReply(); r.type !== NBD_REP_ACK; r = await c.optionReply()) {
    expect(r.type & 0x8000_0000, `GO failed: ${r.data.toString()}`).toBe(0);
  }
}

/** Reads one whole reply (all chunks up to DONE), with a simple READ reply's data. */
async function readReply(c: RawNbdClient, sent: Map<number, Req>): Promise<{ cookie: number; error: number; data?: Buffer; extents?: number[][] }> {
  let data: Buffer | undefined;
  let extents: number[][] | undefined;
  let error = 0;
  for (;;) {
    const r: TransmissionReply = await c.reply();
    const req = sent.get(r.cookie);
    expect(req, `reply to cookie ${r.cookie}, never sent or answered twice`).toBeDefined();
    if (r.kind === 'simple') {
      if (r.error === 0 && req!.command === NBD_CMD_READ) data = Buffer.from(await c.reader.read(req!.length));
      return { cookie: r.cookie, error: r.error, data };
    }
    if (r.type === NBD_REPLY_TYPE_ERROR) {
      expect(r.data.length).toBeGreaterThanOrEqual(6);
      expect(6 + r.data.readUInt16BE(4)).toBe(r.data.length);
      error = r.data.readUInt32BE(0);
    } else if (r.type === NBD_REPLY_TYPE_OFFSET_DATA) {
      expect(readUInt64(r.data, 0)).toBe(req!.offset);
      data = r.data.subarray(8);
    } else if (r.type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      extents = [];
      for (let at = 4; at < r.data.length; at += 8) extents.push([r.data.readUInt32BE(at), r.data.readUInt32BE(at + 4)]);
    } else {
      expect(r.type).toBe(NBD_REPLY_TYPE_NONE);
    }
    if (r.flags & NBD_REPLY_FLAG_DONE) return { cookie: r.cookie, error, data, extents };
  }
}

/** Sends a batch, checks every reply against the model, and applies the valid writes to the shadow. */
async function runBatch(c: RawNbdClient, t: Target, structured: boolean, meta: boolean, batch: readonly Req[], nextCookie: () => number): Promise<void> {
  const sent = new Map<number, Req>();
  for (const r of batch) {
    const cookie = nextCookie();
    sent.set(cookie, r);
    c.request(r.command, r.offset, r.length, { cookie, flags: r.flags, payload: r.command === NBD_CMD_WRITE ? payloadOf(r) : undefined });
  }
  const before = Buffer.from(t.shadow);
  while (sent.size > 0) {
    const reply = await readReply(c, sent);
    const req = sent.get(reply.cookie)!;
    sent.delete(reply.cookie);
    const bad = verdict(t, structured, meta, req);
    const what = `cmd ${req.command} flags 0x${req.flags.toString(16)} at ${req.offset} (+${req.length}) on ${t.name}`;
    if (bad) {
      expect(bad, `${what}: error ${reply.error}`).toContain(reply.error);
      continue;
    }
    expect(reply.error, `${what} failed`).toBe(0);
    if (req.command === NBD_CMD_READ) {
      // Nothing in the batch overlaps a write, so the bytes are those from before the batch.
      expect(reply.data?.length ?? 0, what).toBe(req.length);
      if (req.length > 0) expect(reply.data!.equals(before.subarray(req.offset, req.offset + req.length)), `${what}: wrong data`).toBe(true);
    }
    if (req.command === NBD_CMD_BLOCK_STATUS) {
      expect(reply.extents?.length, what).toBeGreaterThan(0);
      if (req.flags & NBD_CMD_FLAG_REQ_ONE) expect(reply.extents!.length).toBe(1);
      expect(reply.extents!.every(([len]) => len! > 0 && len! <= req.length)).toBe(true);
    }
    apply(t, req);
  }
}

describe('NBD server transmission under fuzzed requests', () => {
  it('answers valid requests correctly, bad ones with errors or a permitted disconnect, and changes nothing it should not', async () => {
    const socket = join(await scratch(), 't.sock');
    const make = (name: string, size: number, o: { readOnly?: boolean; blockSize?: number }): Target => {
      const device = new MemoryDevice(size, { maxRequest: MAX_REQUEST, blockSize: o.blockSize, readOnly: o.readOnly });
      for (let i = 0; i < size; i++) device.data[i] = (i * 31 + name.length) & 0xff;
      return { name, size, readOnly: o.readOnly ?? false, minBlock: o.blockSize ?? 1, device, shadow: Buffer.from(device.data) };
    };
    const targets = [make('disk', 256 * KiB, {}), make('ro', 64 * KiB, { readOnly: true }), make('blk', 256 * KiB, { blockSize: 512 })];
    const errors: Error[] = [];
    const server = new NbdServer({
      exports: targets.map((t) => ({ name: t.name, device: t.device, readOnly: t.readOnly })),
      onClientError: (err) => errors.push(err),
    });
    await server.listen(`nbd+unix:///?socket=${socket}`);
    const heap = new HeapWatch(48 << 20);
    let n = 0;
    try {
      await fc.assert(
        fc.asyncProperty(caseArb, async ({ target, structured, meta, requests, ending }) => {
          n++;
          errors.length = 0;
          const t = targets[target]!;
          let cookie = 1;
          const c = await RawNbdClient.connect(socket);
          try {
            await within(5000, 'handshake', handshake(c, t, structured, meta));
            for (const batch of batches(t, structured, meta, requests)) {
              await within(5000, 'a batch of replies', runBatch(c, t, structured, meta, batch, () => cookie++));
            }
            await within(5000, `ending ${ending.kind}`, finish(c, t, ending));
          } finally {
            c.destroy();
          }
          await sessionsEnd(server);
          expectTypedClientErrors(errors);
          for (const x of targets) expect(x.device.data.equals(x.shadow), `${x.name} differs from its shadow`).toBe(true);
          const w = await stillServes(`nbd+unix:///disk?socket=${socket}`, targets[0]!.size, n);
          w.data.copy(targets[0]!.shadow, w.offset);
          heap.check();
        }),
        fuzzParams(3),
      );
    } finally {
      await server.close();
    }
  }, FUZZ_TEST_TIMEOUT_MS);
});

/** Ends the stream as the case says, and checks the server's answer is one the protocol allows. */
async function finish(c: RawNbdClient, t: Target, ending: Ending): Promise<void> {
  switch (ending.kind) {
    case 'disc':
      c.request(NBD_CMD_DISC, 0, 0, { cookie: 0xdd });
      break;
    case 'badMagic':
      // Nothing after a bad magic can be parsed: the server hangs up without a reply.
      c.request(NBD_CMD_READ, 0, 512, { cookie: 0xbad, magic: ending.magic });
      break;
    case 'hugeWrite': {
      // Over 32 MiB the protocol lets the server treat the payload as an attack: it may refuse and hang up.
      c.request(NBD_CMD_WRITE, 0, ending.length, { cookie: 0x1e, payload: Buffer.alloc(4096, 0xee) });
      const r = await c.reply().catch(() => undefined);
      if (r) {
        expect(r.cookie).toBe(0x1e);
        expect(r.kind === 'simple' ? r.error : r.type).not.toBe(0);
      }
      break;
    }
    case 'shortWrite': {
      c.request(NBD_CMD_WRITE, Math.min(ending.offset, t.size - 4096), 4096, { cookie: 0x5e, payload: Buffer.alloc(ending.sent, 0xcc) });
      c.socket.end(); // the rest of the payload never comes: nothing of it may be written
      break;
    }
    case 'end':
      c.socket.end();
      break;
  }
  expect(await c.closedWithin(3000), `the server did not close after ${ending.kind}`).toBe(true);
}

/**
 * What a client can make the NBD server hold, and for how long: connections, connections in the
 * handshake, handshake time, and bytes buffered per connection (writes faster than the device,
 * replies never read, payloads over the maximum). Each test fails without its limit.
 */
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, NbdError } from '../../src/errors.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import {
  CLIENT_READ_AHEAD_BYTES,
  DEFAULT_MAX_CLIENT_BUFFER_BYTES,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_HANDSHAKES,
  DEFAULT_MAX_REQUESTS_IN_FLIGHT,
  DEFAULT_SERVER_HANDSHAKE_TIMEOUT_MS,
  NbdServer,
  type NbdServerOptions,
} from '../../src/io/nbd/NbdServer.js';
import {
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_ERRNO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_SERVER,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  u32,
} from '../../src/io/nbd/protocol.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';
import { RawNbdClient, type TransmissionReply } from '../helpers/RawNbdClient.js';
import { useScratchDir } from '../helpers/scratch.js';
import { GatedDevice } from './GatedDevice.js';
import { sessionsEnd, stillServes } from './nbdFuzz.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const scratch = useScratchDir();
let server: NbdServer | undefined;
const clients: RawNbdClient[] = [];
const errors: Error[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await server?.close();
  server = undefined;
  errors.length = 0;
});

async function start(device: MemoryDevice, options: Omit<NbdServerOptions, 'exports'> = {}): Promise<{ socket: string; uri: string }> {
  const socket = join(await scratch(), 'l.sock');
  server = new NbdServer({ exports: [{ name: 'disk', device }], onClientError: (err) => errors.push(err), ...options });
  await server.listen(`nbd+unix:///?socket=${socket}`);
  return { socket, uri: `nbd+unix:///disk?socket=${socket}` };
}

async function raw(socket: string): Promise<RawNbdClient> {
  const c = await RawNbdClient.connect(socket);
  clients.push(c);
  return c;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(5);
  }
}

/** The most the server holds for its clients over `ms`. */
async function peakBuffered(ms: number): Promise<number> {
  let peak = 0;
  for (const end = Date.now() + ms; Date.now() < end; await sleep(5)) peak = Math.max(peak, server!.bufferedBytes);
  return peak;
}

function errorOf(r: TransmissionReply): number {
  if (r.kind === 'simple') return r.error;
  return r.type === NBD_REPLY_TYPE_ERROR ? r.data.readUInt32BE(0) : 0;
}

/** A connection as the server's refusal looks from outside: what arrived, and whether it ended in order (FIN) or by reset. */
function connectionFate(path: string): Promise<{ bytes: number; orderly: boolean }> {
  return new Promise((resolve) => {
    const s = connect({ path });
    let bytes = 0;
    let orderly = false;
    s.on('data', (d: Buffer) => (bytes += d.length));
    s.on('end', () => (orderly = true));
    s.on('error', () => {});
    s.on('close', () => resolve({ bytes, orderly }));
  });
}

describe('NBD server limits', () => {
  it('documents its defaults as constants', () => {
    expect(DEFAULT_MAX_CONNECTIONS).toBe(128);
    expect(DEFAULT_MAX_HANDSHAKES).toBe(16);
    expect(DEFAULT_SERVER_HANDSHAKE_TIMEOUT_MS).toBe(30_000);
    expect(DEFAULT_MAX_REQUESTS_IN_FLIGHT).toBe(64);
    expect(DEFAULT_MAX_CLIENT_BUFFER_BYTES).toBe(64 * MiB);
    expect(CLIENT_READ_AHEAD_BYTES).toBe(8 * MiB);
  });

  it('refuses clients past maxConnections (128 by default): closed in order before the greeting, counted, reported; serves again once one leaves', async () => {
    const { socket, uri } = await start(new MemoryDevice(1 * MiB));
    for (let i = 0; i < DEFAULT_MAX_CONNECTIONS; i += 8) {
      await Promise.all(Array.from({ length: 8 }, async () => (await raw(socket)).open('disk', false)));
    }
    expect(server!.clients).toBe(DEFAULT_MAX_CONNECTIONS);
    expect(await connectionFate(socket)).toEqual({ bytes: 0, orderly: true });
    expect(server!.refusedClients).toBe(1);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(NbdError);
    expect(errors[0]).toMatchObject({ code: ErrorCode.NBD_CONNECTION, message: expect.stringMatching(/128 clients are connected \(maxConnections\)/) });
    // Our own client says what happened.
    await expect(NbdDevice.open(uri, { connections: 1 })).rejects.toMatchObject({
      code: ErrorCode.NBD_CONNECTION,
      message: expect.stringMatching(/closed the connection before greeting us \(is it at its connection limit\?\)/),
    });
    expect(server!.refusedClients).toBe(2);
    clients.shift()!.destroy();
    await until('a client left', () => server!.clients < DEFAULT_MAX_CONNECTIONS);
    await stillServes(uri, 1 * MiB, 1);
  });

  it('drops the client longest in the handshake past maxHandshakes, so silent connections cannot keep real clients out', async () => {
    const { socket, uri } = await start(new MemoryDevice(1 * MiB), { maxConnections: 8, maxHandshakes: 4, handshakeTimeoutMs: 60_000 });
    const silent: RawNbdClient[] = [];
    for (let i = 0; i < 20; i++) silent.push(await raw(socket)); // connect, and never say a word
    await until('the server saw them all', () => server!.droppedHandshakes + server!.refusedClients >= 16);
    expect(server!.handshakingClients).toBeLessThanOrEqual(4);
    expect(server!.refusedClients).toBe(0);
    expect(server!.droppedHandshakes).toBe(16);
    expect(await silent[0]!.closedWithin(2000)).toBe(true); // the oldest were dropped, not left hanging
    expect(errors.every((e) => e instanceof NbdError && e.code === ErrorCode.NBD_CONNECTION && /maxHandshakes/.test(e.message))).toBe(true);
    // A real client gets in at once (its handshake takes milliseconds) and is served.
    await stillServes(uri, 1 * MiB, 2);
  });

  it('drops a client that stays silent, or trickles bytes, once the handshake timeout has passed since it connected', async () => {
    const { socket } = await start(new MemoryDevice(1 * MiB), { handshakeTimeoutMs: 300 });
    const t0 = Date.now();
    const quiet = await raw(socket);
    const trickler = await raw(socket);
    // A valid start (client flags, then an NBD_OPT_LIST header), one byte every 20 ms: always busy, never done.
    const valid = Buffer.concat([u32(3), Buffer.from('IHAVEOPT'), u32(3), u32(0)]);
    let at = 0;
    const drip = setInterval(() => at < valid.length && !trickler.socket.destroyed && trickler.send(valid.subarray(at, ++at)), 20);
    try {
      const [quietClosed, tricklerClosed] = await Promise.all([quiet.closedWithin(2000), trickler.closedWithin(2000)]);
      expect([quietClosed, tricklerClosed]).toEqual([true, true]);
      expect(at).toBeLessThan(valid.length); // it was still trickling when dropped
    } finally {
      clearInterval(drip);
    }
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(1500);
    expect(errors).toHaveLength(2);
    for (const e of errors) expect(e).toMatchObject({ code: ErrorCode.NBD_CONNECTION, message: 'the client did not choose an export within 0.3 s of connecting' });
  });

  it('in the handshake, stops reading a client that leaves its option replies unread, and holds little of what it sends ahead', async () => {
    const socket = join(await scratch(), 'h.sock');
    // 64 exports with 4 KiB descriptions: each NBD_OPT_LIST answer is about 270 KiB.
    const exports = Array.from({ length: 64 }, (_, i) => ({ name: `disk${i}`, device: new MemoryDevice(4096), description: 'd'.repeat(4096) }));
    server = new NbdServer({ exports, onClientError: (err) => errors.push(err) });
    await server.listen(`nbd+unix:///?socket=${socket}`);
    const c = await raw(socket);
    await c.greet();
    c.socket.pause(); // reads no replies
    for (let i = 0; i < 20; i++) c.option(NBD_OPT_LIST);
    for (let i = 0; i < 200; i++) c.option(4242, Buffer.alloc(60 * KiB)); // unknown options with big data: small answers
    await sleep(200);
    const peak = await peakBuffered(300);
    // 1 MiB of unread replies (plus the one that crossed it), 64 KiB read ahead (plus one socket read).
    expect(peak).toBeLessThanOrEqual(1 * MiB + 300 * KiB + 64 * KiB + 256 * KiB);
    c.socket.resume();
    for (let i = 0; i < 20; i++) {
      for (let r = await c.optionReply(); r.type !== NBD_REP_ACK; r = await c.optionReply()) expect(r.type).toBe(NBD_REP_SERVER);
    }
    for (let i = 0; i < 200; i++) expect(await c.optionReply()).toMatchObject({ option: 4242, type: NBD_REP_ERR_UNSUP });
    expect(errors).toEqual([]);
  });

  it('stops reading a client that writes faster than the device takes the data, holding no more than its buffer budget', async () => {
    const device = new GatedDevice(64 * MiB, { maxRequest: 1 * MiB });
    const budget = 4 * MiB;
    const { socket } = await start(device, { maxClientBufferBytes: budget });
    const c = await raw(socket);
    await c.open('disk', true);
    const payload = Buffer.alloc(1 * MiB);
    for (let i = 0; i < 64; i++) {
      payload.writeUInt32BE(i, 0); // concat in request() copies, so each write keeps its own first word
      c.request(NBD_CMD_WRITE, i * MiB, 1 * MiB, { cookie: i + 1, payload });
    }
    await sleep(200);
    const peak = await peakBuffered(300);
    // The budget, the one request always let in, and what the client may send ahead.
    expect(peak).toBeLessThanOrEqual(budget + 1 * MiB + CLIENT_READ_AHEAD_BYTES + 256 * KiB);
    expect(device.writesStarted).toBeLessThanOrEqual(budget / MiB + 1);
    expect(c.socket.writableLength).toBeGreaterThan(16 * MiB); // the rest waits on the client's side
    device.open();
    const cookies = new Set<number>();
    for (let i = 0; i < 64; i++) {
      const r = await c.reply();
      expect(errorOf(r)).toBe(0);
      cookies.add(r.cookie);
    }
    expect(cookies.size).toBe(64);
    for (let i = 0; i < 64; i++) expect(device.data.readUInt32BE(i * MiB)).toBe(i);
    expect(errors).toEqual([]);
  });

  it('stops reading a client that never reads its replies, answers everything once it does, and ends the session when it leaves', async () => {
    const device = new MemoryDevice(64 * MiB, { maxRequest: 1 * MiB });
    device.data.fill(0x3c);
    const budget = 4 * MiB;
    const { socket } = await start(device, { maxClientBufferBytes: budget });
    const slow = await raw(socket);
    await slow.open('disk', true);
    slow.socket.pause(); // reads nothing more
    for (let i = 0; i < 64; i++) slow.request(NBD_CMD_READ, i * MiB, 1 * MiB, { cookie: i + 1 });
    await sleep(200);
    const peak = await peakBuffered(300);
    expect(peak).toBeLessThanOrEqual(budget + 1 * MiB + CLIENT_READ_AHEAD_BYTES + 256 * KiB);
    expect(device.reads).toBeLessThanOrEqual(budget / MiB + 4); // plus what the kernel's socket buffers took
    slow.socket.resume();
    for (let i = 0; i < 64; i++) {
      const r = await slow.reply();
      expect(r).toMatchObject({ kind: 'structured', type: NBD_REPLY_TYPE_OFFSET_DATA });
      expect((r as { data: Buffer }).data.subarray(8).equals(device.data.subarray(0, 1 * MiB))).toBe(true);
    }
    // A second one stops reading, then leaves while the server waits for it: the session must not wait forever.
    const gone = await raw(socket);
    await gone.open('disk', true);
    gone.socket.pause();
    for (let i = 0; i < 64; i++) gone.request(NBD_CMD_READ, i * MiB, 1 * MiB, { cookie: i + 1 });
    await sleep(200);
    slow.request(2, 0, 0); // NBD_CMD_DISC
    gone.destroy();
    await sessionsEnd(server!, 2000);
  });

  it('refuses a write over the maximum request size with EINVAL without holding its payload, and keeps the connection', async () => {
    const device = new MemoryDevice(1 * MiB, { maxRequest: 64 * KiB });
    device.data.fill(0x11);
    const { socket } = await start(device);
    const c = await raw(socket);
    await c.open('disk', true);
    const piece = Buffer.alloc(1 * MiB, 0xee);
    c.request(NBD_CMD_WRITE, 0, 16 * MiB, { cookie: 1 });
    let growth = 0;
    for (let i = 0; i < 16; i++) {
      await new Promise<void>((resolve) => c.socket.write(piece, () => resolve()));
      // What the server holds by its own count: the process's memory also counts this client's
      // buffers and the collector's timing, so it is too noisy a measure under a full test run.
      if (i === 12) growth = server!.bufferedBytes;
    }
    // Over the advertised maximum (64 KiB) but under 32 MiB: the stream can be kept in step, so it is, and nothing is held.
    expect(growth).toBeLessThan(4 * MiB);
    const r = await c.reply();
    expect(r.cookie).toBe(1);
    expect(errorOf(r)).toBe(NBD_ERRNO.EINVAL);
    c.request(NBD_CMD_READ, 0, 4096, { cookie: 2 });
    const ok = await c.reply();
    expect(ok).toMatchObject({ cookie: 2, type: NBD_REPLY_TYPE_OFFSET_DATA });
    expect((ok as { data: Buffer }).data.subarray(8).equals(Buffer.alloc(4096, 0x11))).toBe(true);
    expect(errors).toEqual([]);
  });

  it('refuses an export description longer than an NBD string may be, naming the export', () => {
    expect(() => new NbdServer({ exports: [{ name: 'disk', device: new MemoryDevice(MiB), description: 'd'.repeat(4097) }] })).toThrow(
      expect.objectContaining({ code: ErrorCode.INVALID_OPTION, message: expect.stringMatching(/description of export 'disk' is longer than 4096 bytes/) }),
    );
  });
});

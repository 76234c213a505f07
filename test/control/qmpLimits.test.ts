/**
 * The limits on what one QMP client can make a monitor hold (QmpServer's QmpLimits), in-process
 * with a dispatcher the test controls: commands queued, output unread, clients at once, time to
 * negotiate, length of a JSON text. Each test shows the limit holding where, without it, the
 * server would take everything the client sends or keep everything it does not read.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockmirrorError, ErrorCode } from '../../src/errors.js';
import { DEFAULT_QMP_LIMITS, QmpServer, type QmpDispatcher, type QmpLimits } from '../../src/control/qmp/QmpServer.js';

const VERSION = { qemu: { major: 8, minor: 2, micro: 0 }, package: 'test' };
let dir: string;
const servers: QmpServer[] = [];
const sockets: Socket[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-qmplim-'));
});

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
  await rm(dir, { recursive: true, force: true });
});

/** A dispatcher that counts its calls and runs `run` for each. */
function dispatcher(run: (name: string) => Promise<unknown> | unknown): QmpDispatcher & { calls: number } {
  const d = {
    calls: 0,
    dispatch: async (name: string) => {
      d.calls++;
      return run(name);
    },
  };
  return d;
}

async function listen(d: QmpDispatcher, limits: Partial<QmpLimits>): Promise<QmpServer> {
  const server = await QmpServer.listen(join(dir, 'qmp.sock'), d, VERSION, limits);
  servers.push(server);
  return server;
}

/** A raw client: the messages it has received (one per line), and whether it has been closed. */
interface Raw {
  readonly socket: Socket;
  readonly messages: Array<Record<string, unknown>>;
  readonly closed: Promise<void>;
}

async function rawClient(path: string): Promise<Raw> {
  const socket = connect({ path });
  sockets.push(socket);
  socket.on('error', () => {});
  const messages: Array<Record<string, unknown>> = [];
  let buffer = '';
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buffer += d;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      messages.push(JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>);
      buffer = buffer.slice(nl + 1);
    }
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { socket, messages, closed };
}

async function until(what: string, test: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const NEGOTIATE = '{"execute": "qmp_capabilities"}\n';

describe('QMP limits', () => {
  it('has documented defaults', () => {
    expect(DEFAULT_QMP_LIMITS).toEqual({
      maxClients: 64,
      maxJsonBytes: 1 << 20,
      maxPendingCommands: 64,
      maxWriteBuffer: 1 << 20,
      negotiationTimeoutMs: 30_000,
    });
  });

  it('refuses a limit that is not a positive whole number, with a stable code', async () => {
    for (const bad of [{ maxClients: 0 }, { maxPendingCommands: -1 }, { maxWriteBuffer: Number.NaN }, { negotiationTimeoutMs: 1.5 }]) {
      const err = await QmpServer.listen(join(dir, 'bad.sock'), dispatcher(() => ({})), VERSION, bad).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BlockmirrorError);
      expect((err as BlockmirrorError).code).toBe(ErrorCode.INVALID_OPTION);
    }
  });

  it('maxPendingCommands: a client that sends faster than commands run is not read from meanwhile', { timeout: 30_000 }, async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const d = dispatcher(() => released.then(() => ({})));
    const server = await listen(d, { maxPendingCommands: 4 });
    const c = await rawClient(server.path);
    c.socket.write(NEGOTIATE);
    await until('negotiation', () => c.messages.length === 2);
    // 2 MiB of commands, far more than the kernel's socket buffers hold: unless the server takes
    // them all, some stay in the client's own write buffer.
    const command = '{"execute": "x"}\n';
    const count = Math.ceil((2 << 20) / command.length);
    c.socket.write(command.repeat(count));
    await until('the first command', () => d.calls === 1);
    await sleep(300);
    expect(d.calls).toBe(1); // one at a time, and the first has not finished
    expect(c.socket.writableLength).toBeGreaterThan(1 << 20); // the server stopped reading
    release();
    await until('every reply', () => c.messages.length === 2 + count, 25_000);
    expect(d.calls).toBe(count);
    expect(c.messages.slice(2).every((m) => 'return' in m)).toBe(true);
  });

  it('maxPendingCommands: error replies to bad input count too', { timeout: 30_000 }, async () => {
    const server = await listen(dispatcher(() => ({})), { maxPendingCommands: 2, maxWriteBuffer: 64 << 10 });
    const c = await rawClient(server.path);
    await until('the greeting', () => c.messages.length === 1);
    c.socket.pause(); // not read: each ']' is an error reply, and those must not pile up in the server
    const count = 1 << 20;
    c.socket.write(']'.repeat(count));
    // Without the limit the server reads it all within a second or so (queueing a million
    // replies, some 400 MB); with it, it stops reading once two are queued.
    for (let t = 0; t < 1500; t += 100) {
      await sleep(100);
      expect(c.socket.writableLength).toBeGreaterThan(256 << 10);
    }
    expect(server.sessions).toHaveLength(1);
    c.socket.resume();
    await until('some errors', () => c.messages.length > 100);
    expect(c.messages[100]).toEqual({ error: { class: 'GenericError', desc: "JSON parse error, stray ']'" } });
  });

  it('maxWriteBuffer: commands wait while the client leaves its replies unread', { timeout: 30_000 }, async () => {
    const big = 'x'.repeat(64 << 10);
    const d = dispatcher(() => big);
    const server = await listen(d, { maxWriteBuffer: 128 << 10, maxPendingCommands: 1000 });
    const c = await rawClient(server.path);
    c.socket.write(NEGOTIATE);
    await until('negotiation', () => c.messages.length === 2);
    c.socket.pause();
    c.socket.write('{"execute": "big"}\n'.repeat(200));
    await sleep(500);
    // The kernel holds some replies, the server up to its limit: far fewer than 200 x 64 KiB.
    expect(d.calls).toBeGreaterThan(0);
    expect(d.calls).toBeLessThan(60);
    c.socket.resume();
    await until('every reply', () => c.messages.length === 202, 20_000);
    expect(d.calls).toBe(200);
  });

  it('maxWriteBuffer: a client that reads nothing while events pile up is disconnected', { timeout: 30_000 }, async () => {
    const server = await listen(dispatcher(() => ({})), { maxWriteBuffer: 128 << 10 });
    const reader = await rawClient(server.path);
    const stuck = await rawClient(server.path);
    reader.socket.write(NEGOTIATE);
    stuck.socket.write(NEGOTIATE);
    await until('negotiation', () => reader.messages.length === 2 && stuck.messages.length === 2);
    stuck.socket.pause();
    const data = { blob: 'e'.repeat(32 << 10) };
    for (let i = 0; i < 200; i++) {
      server.broadcast('TEST_EVENT', data);
      await sleep(1);
    }
    // (The stuck client, paused, cannot see the close until it reads again.)
    await until('the stuck client to be dropped', () => server.sessions.length === 1);
    await until('every event', () => reader.messages.length === 202, 20_000);
    stuck.socket.resume();
    await stuck.closed;
    expect(stuck.messages.length).toBeLessThan(202);
  });

  it('maxClients: one more client is told why, and closed; a freed slot is taken again', { timeout: 10_000 }, async () => {
    const server = await listen(dispatcher(() => ({})), { maxClients: 2 });
    const a = await rawClient(server.path);
    await rawClient(server.path);
    await until('two greetings', () => server.sessions.length === 2);
    const extra = await rawClient(server.path);
    await extra.closed;
    expect(extra.messages).toEqual([{ error: { class: 'GenericError', desc: 'Too many QMP clients: this monitor serves at most 2 at once' } }]);
    a.socket.end();
    await a.closed;
    await until('the slot to free', () => server.sessions.length === 1);
    const again = await rawClient(server.path);
    await until('a greeting', () => again.messages.length === 1);
    expect(again.messages[0]).toHaveProperty('QMP');
  });

  it('negotiationTimeoutMs: a client that does not negotiate in time is told why, and closed', { timeout: 10_000 }, async () => {
    const server = await listen(dispatcher(() => ({})), { negotiationTimeoutMs: 300 });
    const idle = await rawClient(server.path);
    const chatty = await rawClient(server.path);
    chatty.socket.write('{"execute": "query-version"}\n'); // refused: commands do not count as negotiating
    const good = await rawClient(server.path);
    good.socket.write(NEGOTIATE);
    const started = Date.now();
    await Promise.all([idle.closed, chatty.closed]);
    expect(Date.now() - started).toBeLessThan(3000);
    const timeout = { error: { class: 'GenericError', desc: 'No capabilities negotiation within 300 ms: closing the connection' } };
    expect(idle.messages.slice(1)).toEqual([timeout]);
    expect(chatty.messages.slice(1)).toEqual([expect.objectContaining({ error: expect.objectContaining({ class: 'CommandNotFound' }) }), timeout]);
    await sleep(300);
    expect(good.socket.destroyed).toBe(false);
    expect(server.sessions).toHaveLength(1);
  });

  it('maxJsonBytes: a longer text is refused, the stream goes on', { timeout: 10_000 }, async () => {
    const server = await listen(dispatcher(() => ({ ok: true })), { maxJsonBytes: 1000 });
    const c = await rawClient(server.path);
    c.socket.write(NEGOTIATE);
    c.socket.write(`{"execute": "x", "arguments": {"pad": "${'p'.repeat(2000)}"}}{"execute": "x"}`);
    await until('two replies', () => c.messages.length === 4);
    expect(c.messages[2]).toEqual({ error: { class: 'GenericError', desc: 'JSON parse error, input longer than 1000 bytes' } });
    expect(c.messages[3]).toEqual({ return: { ok: true } });
  });
});

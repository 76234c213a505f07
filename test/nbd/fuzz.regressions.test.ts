/**
 * Bugs the NBD fuzz tests found, each pinned with the smallest input fast-check shrank it to.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockmirrorError, ErrorCode, NbdError } from '../../src/errors.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { NbdServer } from '../../src/io/nbd/NbdServer.js';
import {
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ERRNO,
  NBD_REP_ERR_UNKNOWN,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
} from '../../src/io/nbd/protocol.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';
import { RawNbdClient, type TransmissionReply } from '../helpers/RawNbdClient.js';
import { useScratchDir } from '../helpers/scratch.js';
import { FakeNbdServer, type Script } from './FakeNbdServer.js';
import { exchange, sessionsEnd } from './nbdFuzz.js';

const scratch = useScratchDir();
const KiB = 1024;
let server: NbdServer | undefined;
let fake: FakeNbdServer | undefined;
const clients: RawNbdClient[] = [];
const errors: Error[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await server?.close();
  await fake?.close();
  server = undefined;
  fake = undefined;
  errors.length = 0;
});

async function start(): Promise<string> {
  const socket = join(await scratch(), 'r.sock');
  const disk = new MemoryDevice(256 * KiB, { maxRequest: 64 * KiB });
  server = new NbdServer({ exports: [{ name: 'disk', device: disk }], onClientError: (err) => errors.push(err) });
  await server.listen(`nbd+unix:///?socket=${socket}`);
  return socket;
}

function errorOf(r: TransmissionReply): number {
  if (r.kind === 'simple') return r.error;
  return r.type === NBD_REPLY_TYPE_ERROR ? r.data.readUInt32BE(0) : 0;
}

/** A fake server answering our client validly, except as the mutations say. */
async function fakeServer(mutations: Script['mutations']): Promise<string> {
  const path = join(await scratch(), 'f.sock');
  fake = new FakeNbdServer();
  await fake.listen(path);
  fake.use({ size: 256 * KiB, minBlock: 1, maxBlock: 64 * KiB, multiConn: false, contextId: 7, splitReads: false, mutations });
  return `nbd+unix:///disk?socket=${path}`;
}

describe('NBD server: found by fuzzing', () => {
  it('reports a client leaving during the handshake as a typed error (shrunk input: no bytes, then end)', async () => {
    const socket = await start();
    await exchange(socket, new Uint8Array(0), { ending: 'end' });
    await sessionsEnd(server!);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(NbdError);
    expect(errors[0]).toMatchObject({ code: ErrorCode.NBD_CONNECTION, message: 'client connection lost during the handshake: the peer closed the connection' });
  });

  it('reports protocol breaches and lost connections mid-request with stable codes', async () => {
    const socket = await start();
    const bad = await RawNbdClient.connect(socket);
    clients.push(bad);
    await bad.open('disk', true);
    bad.request(NBD_CMD_READ, 0, 512, { magic: 0xdeadbeef });
    expect(await bad.closedWithin(2000)).toBe(true);
    const cut = await RawNbdClient.connect(socket);
    clients.push(cut);
    await cut.open('disk', true);
    cut.request(NBD_CMD_WRITE, 0, 4096, { payload: Buffer.alloc(100) });
    cut.destroy();
    await sessionsEnd(server!);
    expect(errors.map((e) => [e instanceof BlockmirrorError && e.code, e.message])).toEqual([
      [ErrorCode.NBD_PROTOCOL, 'bad request magic'],
      [ErrorCode.NBD_CONNECTION, "client connection lost in the middle of a request to 'disk': the peer closed the connection"],
    ]);
  });

  it('answers a command flag the command does not take with EINVAL (shrunk input: READ with REQ_ONE, simple replies)', async () => {
    const socket = await start();
    const c = await RawNbdClient.connect(socket);
    clients.push(c);
    await c.open('disk', false);
    c.request(NBD_CMD_READ, 0, 0, { cookie: 1, flags: NBD_CMD_FLAG_REQ_ONE });
    expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
    // DF needs structured replies; NO_HOLE belongs to WRITE_ZEROES only; unknown bits are refused.
    c.request(NBD_CMD_READ, 0, 16, { cookie: 2, flags: NBD_CMD_FLAG_DF });
    expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
    c.request(NBD_CMD_WRITE, 0, 16, { cookie: 3, flags: NBD_CMD_FLAG_NO_HOLE, payload: Buffer.alloc(16, 1) });
    expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
    c.request(NBD_CMD_WRITE_ZEROES, 0, 16, { cookie: 4, flags: 1 << 9 });
    expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
    expect(server!.clients).toBe(1); // none of that is a reason to hang up
    // The flags a command does take still work: FUA anywhere, NO_HOLE on WRITE_ZEROES.
    c.request(NBD_CMD_WRITE_ZEROES, 0, 16, { cookie: 5, flags: NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA });
    expect(errorOf(await c.reply())).toBe(0);
    c.request(NBD_CMD_READ, 0, 16, { cookie: 6, flags: NBD_CMD_FLAG_FUA });
    const r = await c.reply();
    expect(errorOf(r)).toBe(0);
    await c.reader.read(16); // a simple READ reply's data
    const s = await RawNbdClient.connect(socket);
    clients.push(s);
    await s.open('disk', true);
    s.request(NBD_CMD_READ, 0, 16, { cookie: 7, flags: NBD_CMD_FLAG_DF });
    expect(await s.reply()).toMatchObject({ cookie: 7, type: NBD_REPLY_TYPE_OFFSET_DATA });
  });
});

describe('NBD client: found by fuzzing', () => {
  it('refuses an export of 2^53 bytes or more instead of rounding its size (shrunk input: GO answered with size 2^53)', async () => {
    const uri = await fakeServer([{ at: 4, spoil: { kind: 'export', size: 2n ** 53n, flags: 0x16d, sizes: undefined } }]);
    const err = await NbdDevice.open(uri, { connections: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdError);
    expect(err).toMatchObject({ code: ErrorCode.NBD_UNSUPPORTED, message: expect.stringMatching(/2\^53 bytes or more; blockmirror addresses at most 2\^53 - 1/) });
    await fake!.close();
    const largest = await NbdDevice.open(await fakeServer([{ at: 4, spoil: { kind: 'export', size: 2n ** 53n - 1n, flags: 0x16d, sizes: undefined } }]), { connections: 1 });
    expect(largest.size).toBe(2 ** 53 - 1);
    await largest.close();
  });

  it('never puts a server\u2019s control characters into its messages (a hostile server cannot write escapes to our terminal)', async () => {
    const text = Buffer.from('no such export\u001b[2J\u001b]0;owned\u0007\u202e!', 'utf8');
    const uri = await fakeServer([
      { at: 4, spoil: { kind: 'optionReply', alsoValid: false, reply: { magic: 'valid', option: 'echo', type: NBD_REP_ERR_UNKNOWN, length: 'exact', data: text } } },
    ]);
    const err = (await NbdDevice.open(uri, { connections: 1 }).catch((e: unknown) => e)) as NbdError;
    expect(err).toMatchObject({ code: ErrorCode.NBD_NO_EXPORT });
    expect(err.message).toContain('no such export\ufffd[2J\ufffd]0;owned\ufffd\ufffd!');
    expect(err.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
  });
});

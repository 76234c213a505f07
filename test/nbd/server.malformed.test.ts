/**
 * The NBD server under malformed and hostile input, from a hand-driven client: every bad request
 * gets an error reply or a closed connection, never a crash, and other clients keep being served.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { NbdServer } from '../../src/io/nbd/NbdServer.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_ERRNO,
  NBD_FLAG_READ_ONLY,
  NBD_OPT_ABORT,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  u32,
} from '../../src/io/nbd/protocol.js';
import { MemoryDevice } from '../helpers/MemoryDevice.js';
import { RawNbdClient } from '../helpers/RawNbdClient.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const scratch = useScratchDir();
let server: NbdServer | undefined;
const clients: RawNbdClient[] = [];
const clientErrors: Error[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await server?.close();
  server = undefined;
  clientErrors.length = 0;
});

/** A server with a 1 MiB writable export `disk` (max request 64 KiB) and a read-only `ro`. */
async function start(): Promise<{ socket: string; disk: MemoryDevice }> {
  const socket = join(await scratch(), 's.sock');
  const disk = new MemoryDevice(1 << 20, { maxRequest: 64 * KiB });
  disk.data.fill(0x11);
  server = new NbdServer({
    exports: [
      { name: 'disk', device: disk, description: 'a test disk' },
      { name: 'ro', device: new MemoryDevice(64 * KiB), readOnly: true },
    ],
    defaultExport: 'disk',
    onClientError: (err) => clientErrors.push(err),
  });
  await server.listen(`nbd+unix:///?socket=${socket}`);
  return { socket, disk };
}

async function client(socket: string): Promise<RawNbdClient> {
  const c = await RawNbdClient.connect(socket);
  clients.push(c);
  return c;
}

/** Another client can still open the export and read from it. */
async function stillServes(socket: string): Promise<void> {
  const dev = await NbdDevice.open(`nbd+unix:///disk?socket=${socket}`, { connections: 1 });
  const buf = Buffer.alloc(4096);
  await dev.read(buf, 0);
  expect(buf[0]).toBe(0x11);
  await dev.close();
}

/** The NBD error value of a reply (0: success). */
function errorOf(r: Awaited<ReturnType<RawNbdClient['reply']>>): number {
  if (r.kind === 'simple') return r.error;
  return r.type === NBD_REPLY_TYPE_ERROR ? r.data.readUInt32BE(0) : 0;
}

describe('NBD server: handshake input', () => {
  it('hangs up on a bad option magic; others are served', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet();
    c.option(NBD_OPT_LIST, Buffer.alloc(0), 0x1122334455667788n);
    expect(await c.closedWithin(2000)).toBe(true);
    await stillServes(socket);
  });

  it('hangs up on unknown client flags', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet(0x80);
    expect(await c.closedWithin(2000)).toBe(true);
    await stillServes(socket);
  });

  it('hangs up on an oversized option length', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet();
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(0x49484156454f5054n, 0);
    h.writeUInt32BE(NBD_OPT_GO, 8);
    h.writeUInt32BE(0xffff_ffff, 12);
    c.send(h);
    expect(await c.closedWithin(2000)).toBe(true);
    await stillServes(socket);
  });

  it('answers unknown options (and STARTTLS) with NBD_REP_ERR_UNSUP and carries on', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet();
    c.option(4242, Buffer.from('whatever'));
    expect(await c.optionReply()).toMatchObject({ option: 4242, type: NBD_REP_ERR_UNSUP });
    c.option(5); // NBD_OPT_STARTTLS
    expect(await c.optionReply()).toMatchObject({ option: 5, type: NBD_REP_ERR_UNSUP });
    c.option(NBD_OPT_LIST);
    const names: string[] = [];
    for (let r = await c.optionReply(); r.type !== NBD_REP_ACK; r = await c.optionReply()) {
      expect(r.type).toBe(NBD_REP_SERVER);
      names.push(r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    }
    expect(names).toEqual(['disk', 'ro']);
  });

  it('answers malformed known options with NBD_REP_ERR_INVALID, unknown exports with NBD_REP_ERR_UNKNOWN', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet();
    c.option(NBD_OPT_LIST, Buffer.from('x'));
    expect((await c.optionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.option(NBD_OPT_GO, Buffer.from([0, 0, 0, 200, 1, 2])); // name longer than the option
    expect((await c.optionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.option(NBD_OPT_INFO, Buffer.from([0, 0, 0, 4, ...Buffer.from('nope'), 0, 0]));
    expect((await c.optionReply()).type).toBe(NBD_REP_ERR_UNKNOWN);
    c.option(NBD_OPT_SET_META_CONTEXT, Buffer.alloc(8)); // before structured replies
    expect((await c.optionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.option(NBD_OPT_STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(NBD_REP_ACK);
    c.option(NBD_OPT_LIST_META_CONTEXT, Buffer.from([0, 0, 0, 0, 0, 0, 0, 9])); // 9 queries, none present
    expect((await c.optionReply()).type).toBe(NBD_REP_ERR_INVALID);
  });

  it('lists and selects base:allocation', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet();
    c.option(NBD_OPT_STRUCTURED_REPLY);
    await c.optionReply();
    const query = Buffer.concat([u32(4), Buffer.from('disk'), u32(1), u32(5), Buffer.from('base:')]);
    c.option(NBD_OPT_LIST_META_CONTEXT, query);
    const listed = await c.optionReply();
    expect(listed.type).toBe(NBD_REP_META_CONTEXT);
    expect(listed.data.subarray(4).toString()).toBe('base:allocation');
    expect((await c.optionReply()).type).toBe(NBD_REP_ACK);
  });

  it('answers NBD_OPT_ABORT with an ACK and closes', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.greet();
    c.option(NBD_OPT_ABORT);
    expect((await c.optionReply()).type).toBe(NBD_REP_ACK);
    expect(await c.closedWithin(2000)).toBe(true);
  });
});

describe('NBD server: transmission input', () => {
  for (const structured of [true, false]) {
    const mode = structured ? 'structured' : 'simple';

    it(`answers EINVAL past the end, over the maximum size, and to unknown commands, then keeps serving (${mode} replies)`, async () => {
      const { socket } = await start();
      const c = await client(socket);
      expect((await c.open('disk', structured)).size).toBe(1 << 20);
      c.request(NBD_CMD_READ, (1 << 20) - 4096, 8192, { cookie: 1 }); // past the end
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(NBD_CMD_READ, 2 ** 52, 4096, { cookie: 2 }); // far past the end
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(NBD_CMD_READ, 0, 128 * KiB, { cookie: 3 }); // over the 64 KiB maximum
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(NBD_CMD_WRITE_ZEROES, (1 << 20) - 10, 20, { cookie: 4 });
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(NBD_CMD_TRIM, 1 << 20, 1, { cookie: 5 });
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(99, 0, 0, { cookie: 6 }); // unknown command
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(NBD_CMD_WRITE, (1 << 20) - 2, 4, { cookie: 7, payload: Buffer.alloc(4, 0xee) }); // payload read, then refused
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      c.request(NBD_CMD_BLOCK_STATUS, 0, 4096, { cookie: 8 }); // no metadata context selected
      expect(errorOf(await c.reply())).toBe(NBD_ERRNO.EINVAL);
      // The connection still works.
      c.request(NBD_CMD_READ, 4096, 16, { cookie: 9 });
      const ok = await c.reply();
      expect(ok.cookie).toBe(9);
      if (ok.kind === 'structured') {
        expect(ok.type).toBe(NBD_REPLY_TYPE_OFFSET_DATA);
        expect(ok.data.subarray(8)).toEqual(Buffer.alloc(16, 0x11));
      } else {
        expect(ok.error).toBe(0);
        expect(Buffer.from(await c.reader.read(16))).toEqual(Buffer.alloc(16, 0x11));
      }
      expect(clientErrors).toEqual([]);
    });
  }

  it('answers EPERM to writes, zeroes and trims on a read-only export, and says it is read-only', async () => {
    const { socket } = await start();
    const c = await client(socket);
    const { flags } = await c.open('ro', true);
    expect(flags & NBD_FLAG_READ_ONLY).not.toBe(0);
    c.request(NBD_CMD_WRITE, 0, 4, { cookie: 1, payload: Buffer.alloc(4) });
    c.request(NBD_CMD_WRITE_ZEROES, 0, 4096, { cookie: 2 });
    c.request(NBD_CMD_TRIM, 0, 4096, { cookie: 3 });
    c.request(NBD_CMD_FLUSH, 0, 0, { cookie: 4 });
    const replies = [await c.reply(), await c.reply(), await c.reply(), await c.reply()].sort((a, b) => a.cookie - b.cookie);
    expect(replies.map(errorOf)).toEqual([NBD_ERRNO.EPERM, NBD_ERRNO.EPERM, NBD_ERRNO.EPERM, 0]);
  });

  it('hangs up on a bad request magic; others are served', async () => {
    const { socket } = await start();
    const c = await client(socket);
    await c.open('disk', true);
    c.request(NBD_CMD_READ, 0, 4096, { magic: 0xdeadbeef });
    expect(await c.closedWithin(2000)).toBe(true);
    await stillServes(socket);
    expect(clientErrors.map((e) => e.message)).toEqual(['bad request magic']);
  });

  it('refuses an oversized write payload and hangs up; others are served', async () => {
    const { socket, disk } = await start();
    const c = await client(socket);
    await c.open('disk', true);
    c.request(NBD_CMD_WRITE, 0, 0xffff_ffff, { cookie: 3, payload: Buffer.alloc(64 * KiB, 0xaa) });
    const r = await c.reply();
    expect(errorOf(r)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.closedWithin(2000)).toBe(true);
    expect(disk.data[0]).toBe(0x11);
    await stillServes(socket);
  });

  it('survives a client that disconnects mid-request (in a header, in a payload)', async () => {
    const { socket, disk } = await start();
    const a = await client(socket);
    await a.open('disk', true);
    a.send(Buffer.from([0x25, 0x60, 0x95, 0x13, 0, 0, 0])); // 7 bytes of a header
    a.destroy();
    const b = await client(socket);
    await b.open('disk', false);
    b.request(NBD_CMD_WRITE, 0, 64 * KiB, { payload: Buffer.alloc(1000, 0xbb) }); // 1000 of 65536 bytes
    b.destroy();
    const c = await client(socket);
    c.send(Buffer.from([0, 0])); // in the handshake
    c.destroy();
    await stillServes(socket);
    expect(disk.data[0]).toBe(0x11); // the half-sent write was never applied
    await new Promise((r) => setTimeout(r, 50));
    expect(clientErrors.length).toBe(3);
  });

  it('serves several clients at once, each with requests in flight', async () => {
    const { socket, disk } = await start();
    disk.data.forEach((_, i) => (disk.data[i] = i & 0xff));
    const devices = await Promise.all(Array.from({ length: 4 }, () => NbdDevice.open(`nbd+unix:///disk?socket=${socket}`, { connections: 1 })));
    await Promise.all(
      devices.map(async (dev, d) => {
        const bufs = Array.from({ length: 16 }, () => Buffer.alloc(8192));
        await Promise.all(bufs.map((b, i) => dev.read(b, (d * 16 + i) * 8192)));
        bufs.forEach((b, i) => expect(b.equals(disk.data.subarray((d * 16 + i) * 8192, (d * 16 + i + 1) * 8192))).toBe(true));
      }),
    );
    expect(server!.clients).toBe(4);
    await Promise.all(devices.map((d) => d.close()));
  });

  it('relays the device block status, clipped to the request', async () => {
    const socket = join(await scratch(), 'b.sock');
    const disk = new MemoryDevice(1 << 20, {
      extents: [
        { length: 256 * KiB, hole: false, zero: false },
        { length: 768 * KiB, hole: true, zero: true },
      ],
    });
    server = new NbdServer({ exports: [{ name: '', device: disk }] });
    await server.listen(`nbd+unix:///?socket=${socket}`);
    const dev = await NbdDevice.open(`nbd+unix:///?socket=${socket}`);
    expect(await dev.blockStatus(128 * KiB, 512 * KiB)).toEqual([
      { length: 128 * KiB, hole: false, zero: false },
      { length: 384 * KiB, hole: true, zero: true },
    ]);
    await dev.close();
    // Raw: REQ_ONE gives exactly one extent.
    const c = await client(socket);
    await c.greet();
    c.option(NBD_OPT_STRUCTURED_REPLY);
    await c.optionReply();
    c.option(NBD_OPT_SET_META_CONTEXT, Buffer.concat([u32(0), u32(1), u32(15), Buffer.from('base:allocation')]));
    const selected = await c.optionReply();
    expect(selected.type).toBe(NBD_REP_META_CONTEXT);
    expect((await c.optionReply()).type).toBe(NBD_REP_ACK);
    c.option(NBD_OPT_GO, Buffer.concat([u32(0), Buffer.from([0, 0])]));
    while ((await c.optionReply()).type !== NBD_REP_ACK);
    c.request(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, { flags: 1 << 3 });
    const r = await c.reply();
    expect(r).toMatchObject({ kind: 'structured', type: NBD_REPLY_TYPE_BLOCK_STATUS });
    const data = (r as { data: Buffer }).data;
    expect(data.length).toBe(12);
    expect(data.readUInt32BE(0)).toBe(selected.data.readUInt32BE(0));
    expect([data.readUInt32BE(4), data.readUInt32BE(8)]).toEqual([256 * KiB, 0]);
  });
});

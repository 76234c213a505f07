/**
 * The NBD client against real servers: qemu-nbd and nbdkit. Copies are checked with qemu-img
 * compare; errors, dropped connections and reconnects with nbdkit's error and delay filters.
 */
import { copyFile, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { copyImage, ErrorCode, IoError } from '../../src/index.js';
import { NbdConnection } from '../../src/io/nbd/NbdConnection.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { listNbdExports } from '../../src/io/nbd/NbdClientHandshake.js';
import { parseNbdUri } from '../../src/io/nbd/NbdUri.js';
import { allocatedBytes, makeSampleImage } from '../../src/util/imageTools.js';
import { writeRandomFile } from '../helpers/files.js';
import { imagesIdentical, missing, run, usePeers } from '../helpers/peers.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const peers = usePeers();
const cli = join(import.meta.dirname, '../../dist/cli/bin.js');

const unixUri = (socket: string, name = ''): string => `nbd+unix:///${name}?socket=${socket}`;


describe.skipIf(missing('qemu-nbd', 'qemu-img').length > 0)('client against qemu-nbd', () => {
  it('blockmirror copy src.img <NBD URI> into a writable raw qemu-nbd export: identical, zero chunks stay sparse', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    const dst = join(dir, 'dst.img');
    await makeSampleImage(src, { size: 24 * MiB + 4096, holeFraction: 0.5 });
    await writeRandomFile(dst, 24 * MiB + 4096); // old data where the source has holes must become zeros
    const sock = join(dir, 't.sock');
    // No --persistent and one client (qemu-nbd's defaults): the copy must use exactly one connection.
    await peers.qemuNbd([`--socket=${sock}`, '-f', 'raw', '--discard=unmap', dst]);
    const r = await run('node', [cli, 'copy', '--json', src, unixUri(sock)]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const done = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).find((e) => e.event === 'done')!;
    expect(done).toMatchObject({ bytes: 24 * MiB + 4096, bytesZero: 12 * MiB, targetCreated: false });
    expect(await imagesIdentical(src, dst)).toBe(true);
    // Zero chunks went as WRITE_ZEROES (no data sent), which qemu-nbd --discard=unmap turns into holes.
    expect(await allocatedBytes(dst)).toBeLessThanOrEqual((await allocatedBytes(src)) + MiB);
  });

  it('copies out of a read-only qemu-nbd export, skipping its holes', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await makeSampleImage(src, { size: 16 * MiB, holeFraction: 0.75 });
    const sock = join(dir, 's.sock');
    await peers.qemuNbd([`--socket=${sock}`, '-f', 'raw', '--read-only', src]);
    const result = await copyImage(unixUri(sock), join(dir, 'out.img'), { chunkSize: MiB });
    expect(result).toMatchObject({ bytes: 16 * MiB, bytesZero: 12 * MiB, bytesWritten: 4 * MiB, targetCreated: true });
    expect((await readFile(join(dir, 'out.img'))).equals(await readFile(src))).toBe(true);
  });

  it('refuses a read-only export as a target, writing nothing', async () => {
    const dir = await scratch();
    const dst = join(dir, 'dst.img');
    const before = await writeRandomFile(dst, 2 * MiB);
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    const sock = join(dir, 't.sock');
    await peers.qemuNbd([`--socket=${sock}`, '-f', 'raw', '--read-only', '--persistent', dst]);
    await expect(copyImage(join(dir, 'src.img'), unixUri(sock))).rejects.toMatchObject({ code: ErrorCode.TARGET_READ_ONLY });
    expect((await readFile(dst)).equals(before)).toBe(true);
    // A write sent anyway gets qemu-nbd's error reply (7.2 says EINVAL), with its message, as an IoError.
    const conn = await NbdConnection.open(parseNbdUri(unixUri(sock)));
    await expect(conn.write(Buffer.alloc(4096), 0)).rejects.toMatchObject({ errno: 'EINVAL', operation: 'write', message: expect.stringMatching(/read-only/) });
    await conn.close();
  });

  it('refuses a target smaller than the source', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    await writeFile(join(dir, 'dst.img'), '');
    await truncate(join(dir, 'dst.img'), MiB);
    const sock = join(dir, 't.sock');
    await peers.qemuNbd([`--socket=${sock}`, '-f', 'raw', join(dir, 'dst.img')]);
    await expect(copyImage(join(dir, 'src.img'), unixUri(sock))).rejects.toMatchObject({ code: ErrorCode.SIZE_MISMATCH });
  });

  it('uses one connection unless the export advertises multi-conn, then several, within the server limit', async () => {
    const dir = await scratch();
    const image = join(dir, 'img');
    await writeRandomFile(image, 4 * MiB);
    const single = join(dir, 'one.sock');
    await peers.qemuNbd([`--socket=${single}`, '-f', 'raw', '--persistent', image]);
    const one = await NbdDevice.open({ kind: 'nbd', uri: unixUri(single), writable: true });
    await new Promise((r) => setTimeout(r, 100));
    expect([one.canMultiConn, one.connections]).toEqual([false, 1]);
    await one.close();
    // --shared=2: multi-conn, but a third client would never be greeted. The device makes do with two,
    // and closing does not wait for the connection the server keeps waiting.
    const two = join(dir, 'two.sock');
    await peers.qemuNbd([`--socket=${two}`, '-f', 'raw', '--persistent', '--shared=2', image]);
    const dev = await NbdDevice.open({ kind: 'nbd', uri: unixUri(two), writable: true });
    await new Promise((r) => setTimeout(r, 200));
    expect([dev.canMultiConn, dev.connections]).toEqual([true, 2]);
    const data = Buffer.alloc(2 * MiB, 0x3c);
    await Promise.all([dev.write(data.subarray(0, MiB), 0), dev.write(data.subarray(MiB), MiB)]);
    await dev.flush();
    const t0 = performance.now();
    await dev.close();
    expect(performance.now() - t0).toBeLessThan(1000);
    expect((await readFile(image)).subarray(0, 2 * MiB).equals(data)).toBe(true);
  });

  it('discards with TRIM, zeroes with WRITE_ZEROES, and reads what was written, misaligned or not', async () => {
    const dir = await scratch();
    const image = join(dir, 'img');
    await writeRandomFile(image, 8 * MiB);
    const sock = join(dir, 'trim.sock');
    await peers.qemuNbd([`--socket=${sock}`, '-f', 'raw', '--persistent', '--discard=unmap', image]);
    const dev = await NbdDevice.open({ kind: 'nbd', uri: unixUri(sock), writable: true, role: 'target' });
    const before = await allocatedBytes(image);
    await dev.discard(MiB, 4 * MiB);
    await dev.writeZeroes(6 * MiB + 100, 1000);
    const data = Buffer.alloc(5000, 0x42);
    await dev.write(data, 7 * MiB + 3);
    await dev.flush();
    expect(await allocatedBytes(image)).toBeLessThanOrEqual(before - 4 * MiB);
    const back = Buffer.alloc(5000);
    await dev.read(back, 7 * MiB + 3);
    expect(back.equals(data)).toBe(true);
    const zeros = Buffer.alloc(1000, 1);
    await dev.read(zeros, 6 * MiB + 100);
    expect(zeros.every((b) => b === 0)).toBe(true);
    await expect(dev.read(Buffer.alloc(10), 8 * MiB - 5)).rejects.toMatchObject({ errno: 'EINVAL', code: ErrorCode.IO });
    await dev.close();
  });

  it('names a missing export and a missing server with their own error codes', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'img'), MiB);
    const sock = join(dir, 't.sock');
    await peers.qemuNbd([`--socket=${sock}`, '-f', 'raw', '--persistent', '--export-name=disk', join(dir, 'img')]);
    await expect(NbdDevice.open(unixUri(sock, 'nope'))).rejects.toMatchObject({ code: ErrorCode.NBD_NO_EXPORT });
    await expect(NbdDevice.open(unixUri(join(dir, 'none.sock')))).rejects.toMatchObject({ code: ErrorCode.NBD_CONNECTION });
    expect(await listNbdExports(parseNbdUri(unixUri(sock)))).toEqual([{ name: 'disk', description: '' }]);
  });
});

describe.skipIf(missing('nbdkit', 'qemu-img').length > 0)('client against nbdkit', () => {
  it('copies into the memory plugin (multi-conn): identical by qemu-img compare', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await makeSampleImage(src, { size: 20 * MiB, holeFraction: 0.3, extentSize: 256 * 1024 });
    const sock = join(dir, 'm.sock');
    await peers.nbdkit(['-U', sock, 'memory', '32M']);
    const result = await copyImage(src, unixUri(sock), { chunkSize: 256 * 1024 });
    expect(result.bytes).toBe(20 * MiB);
    // The export is larger than the source and was all zeros: compare with the source grown to 32 MiB.
    await copyFile(src, join(dir, 'big.img'));
    await truncate(join(dir, 'big.img'), 32 * MiB);
    expect(await imagesIdentical(join(dir, 'big.img'), unixUri(sock))).toBe(true);
  });

  it('skips the holes of a sparse source it learns from base:allocation (no READ of them)', async () => {
    const dir = await scratch();
    const sock = join(dir, 'sr.sock');
    const log = join(dir, 'nbdkit.log');
    await peers.nbdkit(['-U', sock, '--filter=log', 'sparse-random', '32M', 'percent=10', 'seed=7', `logfile=${log}`]);
    const out = join(dir, 'out.img');
    const result = await copyImage(unixUri(sock), out, { chunkSize: 256 * 1024 });
    // Bytes the copy's connection (the first) read; the compare below reads on its own connection.
    const read = [...(await readFile(log, 'utf8')).matchAll(/connection=1 Read id=\d+ offset=0x[0-9a-f]+ count=0x([0-9a-f]+)/g)].reduce(
      (sum, m) => sum + Number.parseInt(m[1]!, 16),
      0,
    );
    expect(await imagesIdentical(out, unixUri(sock))).toBe(true);
    expect(result.bytesZero).toBeGreaterThan(16 * MiB);
    expect(read).toBe(32 * MiB - result.bytesZero); // every chunk read held data; no hole was read
  });

  it.skipIf(missing('qemu-nbd').length > 0)('copies from one NBD export to another (nbdkit sparse-random into qemu-nbd)', async () => {
    const dir = await scratch();
    const from = join(dir, 'from.sock');
    await peers.nbdkit(['-U', from, 'sparse-random', '16M', 'seed=3']);
    const dst = join(dir, 'dst.img');
    await writeRandomFile(dst, 16 * MiB);
    const to = join(dir, 'to.sock');
    await peers.qemuNbd([`--socket=${to}`, '-f', 'raw', dst]);
    const result = await copyImage(unixUri(from), unixUri(to));
    expect(result.bytes).toBe(16 * MiB);
    expect(await imagesIdentical(dst, unixUri(from))).toBe(true);
    await expect(copyImage(unixUri(from), unixUri(from))).rejects.toMatchObject({ code: ErrorCode.SAME_FILE });
  });

  it('matches many replies to their requests by cookie, in whatever order they come', async () => {
    const dir = await scratch();
    const sock = join(dir, 'p.sock');
    // The pattern plugin stores each 8-byte word's own offset; nbdkit answers from many threads.
    await peers.nbdkit(['-U', sock, '--filter=delay', 'pattern', '64M', 'rdelay=1ms']);
    const dev = await NbdDevice.open(unixUri(sock));
    const offsets = Array.from({ length: 200 }, (_, i) => ((i * 7919) % 16000) * 4096);
    const bufs = offsets.map(() => Buffer.alloc(4096));
    await Promise.all(offsets.map((o, i) => dev.read(bufs[i]!, o)));
    offsets.forEach((o, i) => {
      expect(bufs[i]!.readBigUInt64BE(0)).toBe(BigInt(o));
      expect(bufs[i]!.readBigUInt64BE(4088)).toBe(BigInt(o + 4088));
    });
    await dev.close();
  });

  it.each([
    ['simple replies (--no-sr)', ['--no-sr']],
    ['NBD_OPT_EXPORT_NAME when the server is not fixed newstyle', ['--mask-handshake=0']],
  ])('reads and writes with %s', async (_name, flags) => {
    const dir = await scratch();
    const sock = join(dir, 'o.sock');
    await peers.nbdkit([...flags, '-U', sock, 'memory', '8M']);
    const dev = await NbdDevice.open({ kind: 'nbd', uri: unixUri(sock), writable: true, role: 'target' });
    expect(dev.info.structuredReplies).toBe(false);
    const data = Buffer.alloc(3 * MiB + 123, 0x5a);
    await dev.write(data, 4096 + 7);
    await dev.writeZeroes(MiB, 4096);
    const back = Buffer.alloc(data.length);
    await dev.read(back, 4096 + 7);
    data.fill(0, MiB - 4096 - 7, MiB - 7);
    expect(back.equals(data)).toBe(true);
    await dev.flush();
    await dev.close();
  });

  it('gets EPERM for a write to a read-only nbdkit export', async () => {
    const dir = await scratch();
    const sock = join(dir, 'ro.sock');
    await peers.nbdkit(['--readonly', '-U', sock, 'memory', '1M']);
    await expect(NbdDevice.open({ kind: 'nbd', uri: unixUri(sock), writable: true, role: 'target' })).rejects.toMatchObject({
      code: ErrorCode.TARGET_READ_ONLY,
    });
    const conn = await NbdConnection.open(parseNbdUri(unixUri(sock)));
    await expect(conn.write(Buffer.alloc(4096), 0)).rejects.toMatchObject({ errno: 'EPERM', operation: 'write', code: ErrorCode.IO });
    await conn.close();
  });

  it('refuses an oldstyle-only server', async () => {
    const dir = await scratch();
    const sock = join(dir, 'old.sock');
    await peers.nbdkit(['--oldstyle', '-U', sock, 'memory', '1M']);
    await expect(NbdDevice.open(unixUri(sock))).rejects.toMatchObject({ code: ErrorCode.NBD_UNSUPPORTED });
  });

  it.each([
    ['EIO', 'error-pwrite=EIO'],
    ['ENOSPC', 'error-pwrite=ENOSPC'],
    ['EPERM', 'error-pwrite=EPERM'],
  ])('maps a server %s to an IoError with that errno, for error policies', async (errno, which) => {
    const dir = await scratch();
    const sock = join(dir, 'e.sock');
    await peers.nbdkit(['-U', sock, '--filter=error', 'memory', '4M', which, 'error-pwrite-rate=1']);
    const dev = await NbdDevice.open({ kind: 'nbd', uri: unixUri(sock), writable: true });
    const err = await dev.write(Buffer.alloc(8192, 1), 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IoError);
    expect(err).toMatchObject({ errno, operation: 'write', offset: 0, length: 8192, code: ErrorCode.IO });
    await dev.read(Buffer.alloc(4096), 0); // the connection carries on after an error reply
    await dev.close();
    // ... and through a whole copy, the failure keeps its errno.
    await writeRandomFile(join(dir, 'src.img'), MiB);
    await expect(copyImage(join(dir, 'src.img'), unixUri(sock))).rejects.toMatchObject({ code: ErrorCode.IO, errno });
  });

  it('fails the requests in flight at once when the server dies, and reconnects for the next ones', async () => {
    const dir = await scratch();
    const sock = join(dir, 'd.sock');
    const server = await peers.nbdkit(['-U', sock, '--filter=delay', 'memory', '8M', 'rdelay=20']);
    const dev = await NbdDevice.open({ kind: 'nbd', uri: unixUri(sock), writable: true });
    await dev.write(Buffer.alloc(4096, 7), 0); // acknowledged, never flushed
    const started = performance.now();
    const reads = Array.from({ length: 8 }, (_, i) => dev.read(Buffer.alloc(65536), i * 65536).catch((e: unknown) => e));
    await new Promise((r) => setTimeout(r, 100));
    server.kill('SIGKILL');
    const errors = await Promise.all(reads);
    expect(performance.now() - started).toBeLessThan(5000); // the server would have taken 20 s per read
    for (const e of errors) expect(e).toMatchObject({ errno: 'ECONNRESET', operation: 'read', cause: expect.objectContaining({ code: ErrorCode.NBD_CONNECTION }) });

    // A new server on the same socket: the device reconnects on its own.
    await rm(sock, { force: true });
    await peers.nbdkit(['-U', sock, 'memory', '8M']);
    const back = Buffer.alloc(4096, 1);
    await dev.read(back, 0);
    expect(back.every((b) => b === 0)).toBe(true); // a fresh memory disk: the unflushed write is gone...
    await expect(dev.flush()).rejects.toMatchObject({ errno: 'EIO', operation: 'flush' }); // ...and the next flush says so
    await dev.flush(); // once
    expect(dev.reconnects).toBe(1);
    await dev.close();
  });
});

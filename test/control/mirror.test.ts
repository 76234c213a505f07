/**
 * The QMP daemon end to end, driven by a plain QMP client: start-up --blockdev options,
 * blockdev-add the target, blockdev-mirror, BLOCK_JOB_READY, block-job-complete,
 * BLOCK_JOB_COMPLETED with len == offset, identical target; then the same under fio writing
 * through the daemon's NBD export, and the pivot seen from that export.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdDevice, readBitmapHeader } from '../../src/index.js';
import { useDaemons, type DaemonBinary, type RunningDaemon } from '../helpers/daemon.js';
import { sparseFile, writeRandomFile } from '../helpers/files.js';
import { imagesIdentical, missing, run, usePeers } from '../helpers/peers.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const startDaemon = useDaemons();

/** A daemon serving `src.img` (random data) as writable NBD export `src`, with a QMP socket. */
async function daemonWithSource(
  size: number,
  extra: string[] = [],
  binary: DaemonBinary = 'blockmirror',
): Promise<{ dir: string; src: string; dst: string; nbd: string; qmp: QmpClient; daemon: RunningDaemon }> {
  const dir = await scratch();
  const src = join(dir, 'src.img');
  const dst = join(dir, 'dst.img');
  await writeRandomFile(src, size);
  await sparseFile(dst, size);
  const nbd = join(dir, 'nbd.sock');
  const d = await startDaemon([
    '--blockdev', `driver=file,node-name=src,filename=${src}`,
    '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
    '--export', 'type=nbd,id=e0,node-name=src,writable=on',
    '--chardev', `socket,id=m0,path=${join(dir, 'qmp.sock')},server=on,wait=off`,
    '--monitor', 'chardev=m0',
    ...extra,
  ], { qmp: join(dir, 'qmp.sock'), binary });
  const qmp = await QmpClient.connect(d.qmp);
  return { dir, src, dst, nbd, qmp, daemon: d };
}

describe('blockmirror daemon: mirror over QMP', () => {
  it('mirrors a node started from --blockdev to a blockdev-added target and pivots', async () => {
    const { src, dst, qmp } = await daemonWithSource(24 * MiB);
    expect(qmp.greeting).toMatchObject({ QMP: { version: { qemu: { major: expect.any(Number) } }, capabilities: [] } });
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'job0', device: 'src', target: 'dst', sync: 'full' });
    const ready = await qmp.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'job0');
    expect(ready.data).toMatchObject({ type: 'mirror', device: 'job0', len: 24 * MiB, offset: 24 * MiB, speed: 0 });
    expect(ready.timestamp.seconds).toBeGreaterThan(1_600_000_000);
    const [info] = await qmp.execute<Array<Record<string, unknown>>>('query-block-jobs');
    expect(info).toMatchObject({ type: 'mirror', device: 'job0', status: 'ready', ready: true, 'io-status': 'ok', paused: false, 'actively-synced': false });
    await qmp.execute('block-job-complete', { device: 'job0' });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === 'job0');
    expect(done.data!.len).toBe(done.data!.offset);
    expect(done.data!.error).toBeUndefined();
    await qmp.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'job0' && d.status === 'null');
    // QEMU's order of the job's states, and BLOCK_JOB_COMPLETED before 'concluded'.
    const order = qmp.events.filter((e) => e.data?.id === 'job0' || e.data?.device === 'job0').map((e) => (e.event === 'JOB_STATUS_CHANGE' ? e.data!.status : e.event));
    expect(order).toEqual(['created', 'running', 'ready', 'BLOCK_JOB_READY', 'waiting', 'pending', 'BLOCK_JOB_COMPLETED', 'concluded', 'null']);
    // After the pivot the export serves the target node, as QEMU's mirror replaces the source.
    expect(await qmp.execute('query-block-exports')).toEqual([{ type: 'nbd', id: 'e0', 'node-name': 'dst', 'shutting-down': false }]);
    expect(await qmp.execute('query-block-jobs')).toEqual([]);
    expect(Buffer.compare(await readFile(src), await readFile(dst))).toBe(0);
    await qmp.execute('quit');
  });

  it('tracks 4 KiB granules unless told otherwise: a 4 KiB write once ready costs a 4 KiB copy, not QEMU\'s 64 KiB', async () => {
    const { dst, nbd, qmp } = await daemonWithSource(8 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'j', device: 'src', target: 'dst', sync: 'full' });
    await qmp.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'j');
    const offset = async (): Promise<number> => (await qmp.execute<Array<{ offset: number }>>('query-block-jobs'))[0]!.offset;
    const before = await offset();
    const client = await NbdDevice.open({ kind: 'nbd', uri: `nbd+unix:///src?socket=${nbd}`, writable: true });
    await client.write(Buffer.alloc(4096, 7), 3 * MiB);
    let after = before;
    while (after === before) {
      await new Promise((r) => setTimeout(r, 20));
      after = await offset();
    }
    expect(after - before).toBe(4096);
    await client.close();
    await qmp.execute('quit');
  });

  it('keeps the export working across the pivot: writes before go to both, writes after to the target only', async () => {
    const { src, dst, nbd, qmp } = await daemonWithSource(8 * MiB);
    const client = await NbdDevice.open({ kind: 'nbd', uri: `nbd+unix:///src?socket=${nbd}`, writable: true });
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'j', device: 'src', target: 'dst', sync: 'full', 'copy-mode': 'write-blocking' });
    await client.write(Buffer.alloc(65536, 0xa1), 0);
    await qmp.waitEvent('BLOCK_JOB_READY');
    const [info] = await qmp.execute<Array<Record<string, unknown>>>('query-block-jobs');
    expect(info!['actively-synced']).toBe(true);
    await client.write(Buffer.alloc(4096, 0xb2), MiB);
    await qmp.execute('block-job-complete', { device: 'j' });
    await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    // The same connection, after the pivot: now the target node.
    await client.write(Buffer.alloc(4096, 0xc3), 2 * MiB);
    await client.flush();
    const readBack = Buffer.alloc(4096);
    await client.read(readBack, MiB);
    expect(readBack.every((b) => b === 0xb2)).toBe(true);
    await client.close();
    const [s, t] = [await readFile(src), await readFile(dst)];
    expect(s.subarray(0, 65536).every((b) => b === 0xa1)).toBe(true);
    expect(t.subarray(0, 65536).every((b) => b === 0xa1)).toBe(true);
    expect(t.subarray(2 * MiB, 2 * MiB + 4096).every((b) => b === 0xc3)).toBe(true);
    expect(s.subarray(2 * MiB, 2 * MiB + 4096).every((b) => b === 0xc3)).toBe(false);
    // Apart from the write after the pivot, the two are the same.
    t.fill(0, 2 * MiB, 2 * MiB + 4096);
    s.fill(0, 2 * MiB, 2 * MiB + 4096);
    expect(Buffer.compare(s, t)).toBe(0);
    await qmp.execute('quit');
  });

  it('block-job-cancel of a READY job without force finishes without pivot and says COMPLETED', async () => {
    const { src, dst, qmp } = await daemonWithSource(8 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'j', device: 'src', target: 'dst', sync: 'full' });
    await qmp.waitEvent('BLOCK_JOB_READY');
    await qmp.execute('block-job-cancel', { device: 'j' });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    expect(done.data!.len).toBe(done.data!.offset);
    expect(qmp.events.some((e) => e.event === 'BLOCK_JOB_CANCELLED')).toBe(false);
    expect(await qmp.execute('query-block-exports')).toMatchObject([{ 'node-name': 'src' }]);
    expect(await imagesIdentical(src, dst)).toBe(true);
    await qmp.execute('quit');
  });

  it('a forced cancel says BLOCK_JOB_CANCELLED; auto-finalize/auto-dismiss off wait for job-finalize and job-dismiss', async () => {
    const { dir, dst, qmp } = await daemonWithSource(16 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'slow', device: 'src', target: 'dst', sync: 'full', speed: MiB });
    await qmp.execute('block-job-set-speed', { device: 'slow', speed: 2 * MiB });
    expect((await qmp.execute<Array<Record<string, unknown>>>('query-block-jobs'))[0]).toMatchObject({ status: 'running', ready: false, speed: 2 * MiB });
    await qmp.execute('block-job-cancel', { device: 'slow', force: true });
    const cancelled = await qmp.waitEvent('BLOCK_JOB_CANCELLED');
    expect(cancelled.data).toMatchObject({ device: 'slow', type: 'mirror' });
    await qmp.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'slow' && d.status === 'null');

    const other = join(dir, 'other.img');
    await sparseFile(other, 16 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'other', filename: other });
    await qmp.execute('blockdev-mirror', { 'job-id': 'manual', device: 'src', target: 'other', sync: 'full', 'auto-finalize': false, 'auto-dismiss': false });
    await qmp.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'manual');
    await qmp.execute('block-job-complete', { device: 'manual' });
    await qmp.waitEvent('BLOCK_JOB_PENDING', (d) => d.id === 'manual');
    expect((await qmp.execute<Array<Record<string, unknown>>>('query-jobs'))[0]).toMatchObject({ id: 'manual', status: 'pending' });
    await qmp.execute('job-finalize', { id: 'manual' });
    await qmp.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === 'manual');
    await qmp.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'manual' && d.status === 'concluded');
    expect((await qmp.execute<Array<Record<string, unknown>>>('query-jobs'))[0]).toMatchObject({ id: 'manual', status: 'concluded' });
    await qmp.execute('job-dismiss', { id: 'manual' });
    expect(await qmp.execute('query-jobs')).toEqual([]);
    expect(await imagesIdentical(join(dir, 'src.img'), other)).toBe(true);
    await qmp.execute('quit');
  });

  it('completes two jobs at one point in time with the x-blockmirror transaction action', async () => {
    const { dir, src, dst, qmp } = await daemonWithSource(8 * MiB);
    const src2 = join(dir, 'src2.img');
    const dst2 = join(dir, 'dst2.img');
    await writeRandomFile(src2, 8 * MiB);
    await sparseFile(dst2, 8 * MiB);
    for (const [name, filename] of [['dst', dst], ['src2', src2], ['dst2', dst2]] as const) {
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': name, filename });
    }
    await qmp.execute('blockdev-mirror', { 'job-id': 'a', device: 'src', target: 'dst', sync: 'full' });
    await qmp.execute('blockdev-mirror', { 'job-id': 'b', device: 'src2', target: 'dst2', sync: 'full' });
    await qmp.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'a');
    await qmp.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'b');
    await qmp.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-add', data: { node: 'dst', name: 'since-switch' } },
        { type: 'x-blockmirror-block-job-complete', data: { device: 'a' } },
        { type: 'x-blockmirror-block-job-complete', data: { device: 'b' } },
      ],
    });
    await qmp.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === 'a');
    await qmp.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === 'b');
    expect(await imagesIdentical(src, dst)).toBe(true);
    expect(await imagesIdentical(src2, dst2)).toBe(true);
    // Both pivoted: the export serves the new node, and the bitmap started at the switch.
    expect(await qmp.execute('query-block-exports')).toMatchObject([{ 'node-name': 'dst' }]);
    await qmp.execute('quit');
  });

  it('cancels two READY jobs at one point in time: both end consistent, without pivot', async () => {
    const { dir, src, dst, qmp } = await daemonWithSource(8 * MiB);
    const dst2 = join(dir, 'dst2.img');
    await sparseFile(dst2, 8 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-add', { driver: 'raw', 'node-name': 'dst2', file: { driver: 'file', filename: dst2 } });
    await qmp.execute('blockdev-add', { driver: 'raw', 'node-name': 'view', file: 'src' });
    await qmp.execute('blockdev-mirror', { 'job-id': 'a', device: 'src', target: 'dst', sync: 'full' });
    await qmp.waitEvent('BLOCK_JOB_READY', (d) => d.device === 'a');
    // A node under another job cannot be mirrored again, even through a raw node over it.
    expect(await qmp.request('blockdev-mirror', { 'job-id': 'b', device: 'view', target: 'dst2', sync: 'full' })).toMatchObject({ error: { desc: expect.stringMatching(/busy/) } });
    await qmp.execute('transaction', { actions: [{ type: 'x-blockmirror-block-job-cancel', data: { device: 'a' } }] });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED', (d) => d.device === 'a');
    expect(done.data!.len).toBe(done.data!.offset);
    expect(await qmp.execute('query-block-exports')).toMatchObject([{ 'node-name': 'src' }]);
    expect(await imagesIdentical(src, dst)).toBe(true);
    await qmp.execute('quit');
  });

  it('SIGTERM stops a running job (BLOCK_JOB_CANCELLED), saves bitmaps clean and exits 0', async () => {
    const { dir, dst, qmp, daemon: d } = await daemonWithSource(8 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('block-dirty-bitmap-add', { node: 'src', name: 'p', persistent: true });
    await qmp.execute('blockdev-mirror', { 'job-id': 'slow', device: 'src', target: 'dst', sync: 'full', speed: MiB });
    d.child.kill('SIGTERM');
    const cancelled = await qmp.waitEvent('BLOCK_JOB_CANCELLED');
    expect(cancelled.data).toMatchObject({ device: 'slow' });
    await qmp.waitEvent('BLOCK_EXPORT_DELETED');
    expect(await d.exited).toBe(0);
    expect((await readBitmapHeader(join(dir, 'src.img.p.bmp'))).inUse).toBe(false);
  });
});

describe('blockmirror daemon: NBD server and exports over QMP', () => {
  it('nbd-server-start, block-export-add, block-export-del safe (refused with a client) and hard, nbd-server-stop', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'disk.img'), MiB);
    const d = await startDaemon(['--blockdev', `driver=file,node-name=disk,filename=${join(dir, 'disk.img')}`, '--qmp', join(dir, 'q.sock')]);
    const qmp = await QmpClient.connect(d.qmp);
    expect(await qmp.request('block-export-add', { type: 'nbd', id: 'x', 'node-name': 'disk' })).toMatchObject({ error: { desc: 'NBD server not running' } });
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: join(dir, 'n.sock') } } });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'x', 'node-name': 'disk', name: 'data', writable: true });
    const client = await NbdDevice.open({ kind: 'nbd', uri: `nbd+unix:///data?socket=${join(dir, 'n.sock')}`, writable: true });
    await client.write(Buffer.alloc(512, 1), 0);
    expect(await qmp.request('block-export-del', { id: 'x' })).toMatchObject({ error: { desc: "export 'x' still in use" } });
    await qmp.execute('block-export-del', { id: 'x', mode: 'hard' });
    await qmp.waitEvent('BLOCK_EXPORT_DELETED', (e) => e.id === 'x');
    expect(await qmp.execute('query-block-exports')).toEqual([]);
    await expect(client.read(Buffer.alloc(512), 0)).rejects.toThrow();
    await client.close().catch(() => undefined);
    await qmp.execute('nbd-server-stop');
    expect(await qmp.request('nbd-server-stop')).toMatchObject({ error: { desc: 'NBD server not running' } });
    await qmp.execute('blockdev-del', { 'node-name': 'disk' });
    expect(await qmp.execute('query-named-block-nodes')).toEqual([]);
    await qmp.execute('quit');
    expect(await d.exited).toBe(0);
  });
});

describe.skipIf(missing('fio').length > 0)('blockmirror daemon: mirror while fio writes through the NBD export', () => {
  const fio = (nbd: string, extra: string[]): Promise<Awaited<ReturnType<typeof run>>> =>
    run('fio', ['--name=w', '--ioengine=nbd', `--uri=nbd+unix:///src?socket=${nbd}`, '--rw=randwrite', '--bs=4k', '--iodepth=8', '--output-format=json', ...extra], {
      timeoutMs: 60_000,
    });

  it('stops fio, completes, and the target is identical', async () => {
    const { src, dst, nbd, qmp } = await daemonWithSource(32 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    // Rate-limited so fio's writes land while the bulk copy is still running.
    await qmp.execute('blockdev-mirror', { 'job-id': 'j', device: 'src', target: 'dst', sync: 'full', speed: 16 * MiB });
    const writer = fio(nbd, ['--size=32M', '--io_size=8M']);
    const r = await writer;
    expect(r.code, r.stderr).toBe(0);
    await qmp.execute('block-job-set-speed', { device: 'j', speed: 0 });
    await qmp.waitEvent('BLOCK_JOB_READY');
    await qmp.execute('block-job-complete', { device: 'j' });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    expect(done.data!.len).toBe(done.data!.offset);
    expect(done.data!.offset as number).toBeGreaterThanOrEqual(32 * MiB);
    expect(await imagesIdentical(src, dst)).toBe(true);
    await qmp.execute('quit');
  });

  it('completes while fio writes; fio verifies every block it wrote through the pivot', async () => {
    const { nbd, src, dst, qmp } = await daemonWithSource(32 * MiB);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'j', device: 'src', target: 'dst', sync: 'full' });
    await qmp.waitEvent('BLOCK_JOB_READY');
    // Write-then-verify: the pivot falls in the write phase, the verify reads from the target.
    const writer = fio(nbd, ['--size=32M', '--io_size=32M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0']);
    // Complete once fio's writes are arriving (they grow the job's len past the image size).
    for (let len = 0; len <= 32 * MiB + 4 * MiB; await new Promise((r) => setTimeout(r, 10))) {
      len = (await qmp.execute<Array<{ len: number }>>('query-block-jobs'))[0]!.len;
    }
    await qmp.execute('block-job-complete', { device: 'j' });
    await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    const r = await writer;
    expect(r.code, r.stderr).toBe(0);
    const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number } }[] }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(32 * MiB);
    expect(await qmp.execute('query-block-exports')).toMatchObject([{ 'node-name': 'dst' }]);
    // fio went on writing after the pivot: those writes are on the target only.
    expect(await imagesIdentical(src, dst)).toBe(false);
    await qmp.execute('quit');
  });
});

describe('blockmirror daemon: the same session as qemu-storage-daemon', () => {
  /** blockdev-add, blockdev-mirror, ready, complete: what the events say, without timestamps. */
  async function session(binary: DaemonBinary): Promise<{ events: string[]; identical: boolean; exports: unknown }> {
    const { src, dst, qmp } = await daemonWithSource(8 * MiB, [], binary);
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'dst', filename: dst });
    await qmp.execute('blockdev-mirror', { 'job-id': 'job0', device: 'src', target: 'dst', sync: 'full' });
    await qmp.waitEvent('BLOCK_JOB_READY');
    await qmp.execute('block-job-complete', { device: 'job0' });
    await qmp.waitEvent('JOB_STATUS_CHANGE', (d) => d.status === 'null');
    const exports = await qmp.execute('query-block-exports');
    const events = qmp.events.map((e) => `${e.event} ${JSON.stringify(e.data)}`);
    await qmp.execute('quit');
    return { events, identical: await imagesIdentical(src, dst), exports };
  }

  it.skipIf(missing('qemu-storage-daemon').length > 0)('sends the same events, in the same order, with the same fields', async () => {
    const ours = await session('blockmirror');
    const qemu = await session('qemu-storage-daemon');
    // Field order inside "data" differs (JSON objects are unordered): compare parsed.
    const parse = (lines: string[]): unknown[] => lines.map((l) => [l.split(' ')[0], JSON.parse(l.slice(l.indexOf(' ') + 1))]);
    expect(parse(ours.events)).toEqual(parse(qemu.events));
    expect(ours.exports).toEqual(qemu.exports);
    expect([ours.identical, qemu.identical]).toEqual([true, true]);
  });
});

describe.skipIf(missing('qemu-nbd').length > 0)('blockmirror daemon: raw and nbd nodes', () => {
  const peers = usePeers();

  it('mirrors a raw node (over an inline file node, given as JSON) into an nbd node on qemu-nbd, on one connection', async () => {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    const remote = join(dir, 'remote.img');
    await writeRandomFile(src, 16 * MiB);
    await sparseFile(remote, 16 * MiB);
    // qemu-nbd serves one client: the node's connection must be the one the job copies on.
    await peers.qemuNbd(['-f', 'raw', `--socket=${join(dir, 'remote.sock')}`, '-x', 'remote', remote]);
    const d = await startDaemon([
      '--blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'disk', file: { driver: 'file', filename: src } }),
      '--blockdev', `driver=nbd,node-name=far,server.type=unix,server.path=${join(dir, 'remote.sock')},export=remote`,
      '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
      '--export', 'type=nbd,id=e0,node-name=disk,name=vm,writable=on',
      '--qmp', join(dir, 'qmp.sock'),
    ]);
    const qmp = await QmpClient.connect(d.qmp);
    const nodes = await qmp.execute<Array<{ 'node-name': string; drv: string }>>('query-named-block-nodes');
    expect(nodes.map((n) => [n['node-name'].startsWith('#block') ? '#block' : n['node-name'], n.drv])).toEqual([
      ['#block', 'file'],
      ['disk', 'raw'],
      ['far', 'nbd'],
    ]);
    await qmp.execute('block-dirty-bitmap-add', { node: nodes[0]!['node-name'], name: 'below' });
    const client = await NbdDevice.open({ kind: 'nbd', uri: `nbd+unix:///vm?socket=${join(dir, 'nbd.sock')}`, writable: true });
    await qmp.execute('blockdev-mirror', { 'job-id': 'out', device: 'disk', target: 'far', sync: 'full' });
    await client.write(Buffer.alloc(65536, 9), 7 * MiB);
    await qmp.waitEvent('BLOCK_JOB_READY');
    await client.close();
    await qmp.execute('block-job-complete', { device: 'out' });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    expect(done.data!.error).toBeUndefined();
    // The write through the raw node marked the file node below it too.
    const below = (await qmp.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ count: number }> }>>('query-named-block-nodes'))[0]!;
    expect(below['dirty-bitmaps']![0]!.count).toBe(65536);
    expect(await qmp.execute('query-block-exports')).toMatchObject([{ id: 'e0', 'node-name': 'far' }]);
    await qmp.execute('quit');
    expect(await d.exited).toBe(0);
    expect(await imagesIdentical(src, remote)).toBe(true);
  });
});

describe.skipIf(missing('nbdkit').length > 0)('blockmirror daemon: target errors over QMP', () => {
  const peers = usePeers();

  async function failingTarget(policy: string): Promise<{ qmp: QmpClient }> {
    const dir = await scratch();
    const src = join(dir, 'src.img');
    await writeRandomFile(src, 4 * MiB);
    await peers.nbdkit(['-U', join(dir, 'bad.sock'), '--filter=error', 'memory', '4M', 'error-pwrite=ENOSPC', 'error-pwrite-rate=1']);
    const d = await startDaemon([
      '--blockdev', `driver=file,node-name=src,filename=${src}`,
      '--blockdev', `driver=nbd,node-name=bad,server.type=unix,server.path=${join(dir, 'bad.sock')}`,
      '--qmp', join(dir, 'qmp.sock'),
    ]);
    const qmp = await QmpClient.connect(d.qmp);
    await qmp.execute('blockdev-mirror', { 'job-id': 'j', device: 'src', target: 'bad', sync: 'full', 'on-target-error': policy });
    return { qmp };
  }

  it("on-target-error 'report': BLOCK_JOB_ERROR, then BLOCK_JOB_COMPLETED with the error", async () => {
    const { qmp } = await failingTarget('report');
    const err = await qmp.waitEvent('BLOCK_JOB_ERROR');
    expect(err.data).toEqual({ device: 'j', operation: 'write', action: 'report' });
    const done = await qmp.waitEvent('BLOCK_JOB_COMPLETED');
    expect(done.data).toMatchObject({ device: 'j', type: 'mirror', error: 'No space left on device' });
    await qmp.execute('quit');
  });

  it("on-target-error 'enospc': the job stops with io-status nospace until resumed or cancelled", async () => {
    const { qmp } = await failingTarget('enospc');
    const err = await qmp.waitEvent('BLOCK_JOB_ERROR');
    expect(err.data).toEqual({ device: 'j', operation: 'write', action: 'stop' });
    await qmp.waitEvent('JOB_STATUS_CHANGE', (d) => d.status === 'paused');
    expect((await qmp.execute<Array<Record<string, unknown>>>('query-block-jobs'))[0]).toMatchObject({ status: 'paused', paused: true, 'io-status': 'nospace' });
    await qmp.execute('block-job-cancel', { device: 'j', force: true });
    await qmp.waitEvent('BLOCK_JOB_CANCELLED');
    await qmp.execute('quit');
  });
});

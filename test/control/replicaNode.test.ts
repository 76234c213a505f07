/**
 * A replica as a daemon node: x-blockmirror-replica-start over a file node of a real
 * `blockmirror daemon`, writes through the replica's own NBD export, a checkpoint and a failover to
 * it driven over the daemon's QMP monitor, the node busy meanwhile, and query-blockmirror-replicas.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { useDaemons } from '../helpers/daemon.js';
import { writeRandomFile } from '../helpers/files.js';
import { QmpClient, QmpCommandError } from '../helpers/qmpClient.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const MiB = 1 << 20;
type Listed = { id: string; 'node-name': string; uri: string; status: { state: string; 'writes-since-checkpoint': number; 'buffer-bytes': number } };
const scratch = useScratchDir();
const startDaemon = useDaemons();

async function refused(p: Promise<unknown>): Promise<{ class: string; desc: string }> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(QmpCommandError);
  return (err as QmpCommandError).reply;
}

describe('blockmirror daemon: a replica over a file node', () => {
  it('start, write, checkpoint, write, failover to the checkpoint: the image is the checkpoint byte for byte', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    const initial = await writeRandomFile(image, 4 * MiB);
    const d = await startDaemon([
      '--blockdev', `driver=file,node-name=disk,filename=${image}`,
      '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
      '--qmp', join(dir, 'qmp.sock'),
    ]);
    const qmp = await QmpClient.connect(d.qmp);
    const names = (await qmp.execute<Array<{ name: string }>>('query-commands')).map((c) => c.name);
    for (const n of ['x-blockmirror-replica-start', 'x-blockmirror-replica-checkpoint', 'x-blockmirror-replica-failover', 'x-blockmirror-replica-stop', 'query-blockmirror-replicas']) {
      expect(names).toContain(n);
    }
    // Bad arguments: QEMU's messages.
    expect((await refused(qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r0' }))).desc).toBe("Parameter 'export' is missing");
    expect((await refused(qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r0', export: 'x', durability: 'never' }))).desc).toMatch(/durability/);

    const uri = `nbd+unix:///r0?socket=${join(dir, 'r0.sock')}`;
    await qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r0', export: uri, granularity: 64 * KiB, state: join(dir, 'state'), durability: 'process' });

    // The node is busy: a second replica, an export, blockdev-del, a bitmap are refused.
    const second = await refused(qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r1', export: `nbd+unix:///r1?socket=${join(dir, 'r1.sock')}` }));
    expect(second).toMatchObject({ class: 'GenericError' });
    expect(second.desc).toMatch(/busy.*replica 'r0'/);
    expect((await refused(qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r0', export: 'x' }))).desc).toMatch(/already in use/);
    expect((await refused(qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'disk', writable: true }))).desc).toMatch(/replica 'r0'/);
    expect((await refused(qmp.execute('blockdev-del', { 'node-name': 'disk' }))).desc).toMatch(/replica 'r0'/);
    expect((await refused(qmp.execute('block-dirty-bitmap-add', { node: 'disk', name: 'b' }))).desc).toMatch(/replica 'r0'/);
    expect((await refused(qmp.execute('x-blockmirror-replica-start', { 'node-name': 'nope', id: 'r2', export: 'x' }))).desc).toMatch(/Cannot find device='nope'/);

    // Unknown id.
    for (const [cmd, args] of [
      ['x-blockmirror-replica-checkpoint', { id: 'zz' }],
      ['x-blockmirror-replica-failover', { id: 'zz', to: 'latest' }],
      ['x-blockmirror-replica-stop', { id: 'zz' }],
    ] as const) {
      expect(await refused(qmp.execute(cmd, args))).toEqual({ class: 'DeviceNotFound', desc: "Replica 'zz' not found" });
    }

    const nbd = await NbdDevice.open({ kind: 'nbd', uri, writable: true, role: 'target' });
    const expected = Buffer.from(initial);
    const a = randomBytes(200 * KiB);
    await nbd.write(a, 100 * KiB);
    a.copy(expected, 100 * KiB);
    await nbd.writeZeroes(2 * MiB, 64 * KiB);
    expected.fill(0, 2 * MiB, 2 * MiB + 64 * KiB);
    await nbd.flush();
    expect(await qmp.execute('x-blockmirror-replica-checkpoint', { id: 'r0', 'checkpoint-id': 7 })).toMatchObject({ id: 7 });

    // After the checkpoint: writes that failover to the checkpoint must undo.
    await nbd.write(randomBytes(300 * KiB), 50 * KiB);
    await nbd.write(randomBytes(4 * KiB), 4 * MiB - 4 * KiB);
    await nbd.discard(3 * MiB, 128 * KiB);

    const list = await qmp.execute<Listed[]>('query-blockmirror-replicas');
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ id: 'r0', 'node-name': 'disk', uri, status: { state: 'replicating', checkpoint: { id: 7 }, 'checkpoint-trusted': true, durability: 'process', granularity: 64 * KiB, size: 4 * MiB } });
    expect(list[0]!.status['writes-since-checkpoint']).toBe(3);
    expect(list[0]!.status['buffer-bytes']).toBeGreaterThan(0);

    const f = await qmp.execute<{ 'restored-bytes': number }>('x-blockmirror-replica-failover', { id: 'r0', to: 'checkpoint' });
    expect(f).toMatchObject({ state: 'failed-over', to: 'checkpoint', checkpoint: { id: 7 } });
    expect(f['restored-bytes']).toBeGreaterThan(0);
    expect(Buffer.compare(await readFile(image), expected)).toBe(0);
    // Failed over: the export passes writes straight through; another failover is refused.
    expect((await refused(qmp.execute('x-blockmirror-replica-failover', { id: 'r0', to: 'latest' }))).desc).toMatch(/failed over/);
    expect((await qmp.execute<Listed[]>('query-blockmirror-replicas'))[0]!.status.state).toBe('failed-over');
    await nbd.close();

    // Stopped: the node is free again.
    await qmp.execute('x-blockmirror-replica-stop', { id: 'r0' });
    expect(await qmp.execute('query-blockmirror-replicas')).toEqual([]);
    await qmp.execute('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'disk' });
    await qmp.execute('block-export-del', { id: 'e0' });
    await qmp.execute('blockdev-del', { 'node-name': 'disk' });
    await qmp.execute('quit');
    expect(await d.exited).toBe(0);
  });

  it('quit closes a running replica cleanly (a restart on the same image carries on from its checkpoint)', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    const initial = await writeRandomFile(image, MiB);
    const args = ['--blockdev', `driver=file,node-name=disk,filename=${image}`, '--qmp', join(dir, 'qmp.sock')];
    const uri = `nbd+unix:///r?socket=${join(dir, 'r.sock')}`;
    let d = await startDaemon(args);
    let qmp = await QmpClient.connect(d.qmp);
    await qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r', export: uri });
    const nbd = await NbdDevice.open({ kind: 'nbd', uri, writable: true, role: 'target' });
    await nbd.write(randomBytes(64 * KiB), 0);
    await nbd.close();
    await qmp.execute('quit');
    expect(await d.exited).toBe(0);

    d = await startDaemon(args);
    qmp = await QmpClient.connect(d.qmp);
    await qmp.execute('x-blockmirror-replica-start', { 'node-name': 'disk', id: 'r', export: uri });
    // No checkpoint yet: failover to it puts back the disk as the replica first found it.
    await qmp.execute('x-blockmirror-replica-failover', { id: 'r', to: 'checkpoint' });
    expect(Buffer.compare(await readFile(image), initial)).toBe(0);
    d.child.kill('SIGTERM');
    expect(await d.exited).toBe(0);
  });
});

/**
 * The replica end to end, as the primary sees it: writes through a real NBD client, commands on
 * the control socket through a plain QMP client.
 */
import { access, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { Replica } from '../../src/replica/Replica.js';
import { replicaFilesFor } from '../../src/replica/replicaFiles.js';
import { bootId } from '../../src/state/JobStateFile.js';
import { QmpClient, QmpCommandError } from '../helpers/qmpClient.js';
import { seededRandom } from '../helpers/random.js';
import { useScratchDir } from '../helpers/scratch.js';
import { contentsOf, randomDisk } from './replicaKit.js';

const scratch = useScratchDir();
const G = 64 << 10;
const SIZE = 64 * G;

const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close().catch(() => {});
});

/** A replica of a random disk in `dir` (or of the disk already there), its NBD export and control socket open. */
async function startReplica(dir: string, options: { fresh?: boolean; granularity?: number } = {}) {
  const disk = options.fresh === false ? undefined : await randomDisk(dir, SIZE);
  if (disk) await disk.device.close();
  const replica = await Replica.start({
    disk: join(dir, 'disk.img'),
    export: `nbd+unix:///replica?socket=${join(dir, 'nbd.sock')}`,
    control: join(dir, 'control.sock'),
    granularity: options.granularity,
  });
  open.push(replica);
  const nbd = await NbdDevice.open({ kind: 'nbd', uri: replica.uri, writable: true, role: 'target' });
  open.push(nbd);
  const qmp = await QmpClient.connect(join(dir, 'control.sock'));
  open.push(qmp);
  return { replica, nbd, qmp, contents: disk?.contents, path: join(dir, 'disk.img') };
}

/** Random writes through `nbd`, at 4 KiB-aligned offsets mostly, some not. */
async function randomWrites(nbd: NbdDevice, random: () => number, count: number): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, async () => {
      const aligned = random() < 0.8;
      const length = aligned ? 4096 * (1 + Math.floor(random() * 8)) : 1 + Math.floor(random() * 20000);
      const offset = Math.min(SIZE - length, aligned ? 4096 * Math.floor(random() * (SIZE / 4096)) : Math.floor(random() * SIZE));
      await nbd.write(Buffer.alloc(length, Math.floor(random() * 256)), offset);
    }),
  );
  await nbd.flush();
}

describe('blockmirror replica, through NBD and its control socket', () => {
  it("puts the disk back exactly as of the last checkpoint on failover to 'checkpoint', then serves it read-write", async () => {
    const { nbd, qmp, path } = await startReplica(await scratch());
    const random = seededRandom(1);
    await randomWrites(nbd, random, 50);
    const checkpoint = await qmp.execute<{ id: number; time: string }>('checkpoint', { id: 7 });
    expect(checkpoint.id).toBe(7);
    expect(Number.isNaN(Date.parse(checkpoint.time))).toBe(false);
    const atCheckpoint = await contentsOf(path);

    await randomWrites(nbd, random, 80);
    const result = await qmp.execute<Record<string, unknown>>('failover', { to: 'checkpoint' });
    expect(result).toMatchObject({ state: 'failed-over', to: 'checkpoint', checkpoint: { id: 7 } });
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(true);

    await nbd.write(Buffer.alloc(4096, 0xab), 0);
    await nbd.flush();
    expect((await contentsOf(path)).subarray(0, 4096).equals(Buffer.alloc(4096, 0xab))).toBe(true);
    expect(await qmp.execute('query-replica')).toMatchObject({ state: 'failed-over', 'buffer-bytes': 0, 'saved-granules': 0 });
  });

  it("keeps every write on failover to 'latest'", async () => {
    const { nbd, qmp, path } = await startReplica(await scratch());
    await randomWrites(nbd, seededRandom(2), 40);
    await qmp.execute('checkpoint');
    await randomWrites(nbd, seededRandom(3), 40);
    const latest = await contentsOf(path);

    expect(await qmp.execute('failover', { to: 'latest' })).toMatchObject({ state: 'failed-over', to: 'latest', 'restored-bytes': 0 });
    expect((await contentsOf(path)).equals(latest)).toBe(true);
  });

  it('reports its checkpoint, buffer and the writes since the checkpoint in query-replica', async () => {
    const { nbd, qmp } = await startReplica(await scratch());
    const before = await qmp.execute<Record<string, unknown>>('query-replica');
    expect(before).toMatchObject({ state: 'replicating', checkpoint: { id: null }, 'buffer-bytes': 0, 'saved-granules': 0, granularity: G, size: SIZE });

    await qmp.execute('checkpoint', { id: 41 });
    await nbd.write(Buffer.alloc(4096, 1), 0);
    await nbd.write(Buffer.alloc(8192, 2), 10 * G + 4096);
    await nbd.write(Buffer.alloc(4096, 3), 100);
    const s = await qmp.execute<Record<string, unknown>>('query-replica');
    expect(s).toMatchObject({
      state: 'replicating',
      checkpoint: { id: 41 },
      'buffer-bytes': 2 * G,
      'saved-granules': 2,
      'writes-since-checkpoint': 3,
      'bytes-since-checkpoint': 16384,
    });
    expect(s.lag).toBeGreaterThanOrEqual(0);
    expect(Date.parse((s.checkpoint as { time: string }).time)).toBeLessThanOrEqual(Date.now());
  });

  it('refuses a second failover and a checkpoint after failover; bad arguments and unknown commands get QMP errors', async () => {
    const { qmp } = await startReplica(await scratch());
    const refused = async (name: string, args?: Record<string, unknown>): Promise<{ class: string; desc: string }> => {
      const reply = await qmp.request(name, args);
      expect(reply).toHaveProperty('error');
      return reply.error as { class: string; desc: string };
    };
    expect(await refused('failover', { to: 'yesterday' })).toMatchObject({ class: 'GenericError', desc: "Parameter 'to' does not accept value 'yesterday'" });
    expect(await refused('failover')).toMatchObject({ class: 'GenericError', desc: "Parameter 'to' is missing" });
    expect(await refused('checkpoint', { id: -1 })).toMatchObject({ class: 'GenericError' });
    expect(await refused('checkpoint', { id: 1, extra: true })).toMatchObject({ desc: "Parameter 'extra' is unexpected" });
    expect(await refused('drill-stop')).toMatchObject({ class: 'GenericError', desc: expect.stringContaining(ErrorCode.JOB_STATE) });
    expect(await refused('block-job-cancel')).toMatchObject({ class: 'CommandNotFound' });

    await qmp.execute('failover', { to: 'latest' });
    expect(await refused('failover', { to: 'checkpoint' })).toMatchObject({ desc: expect.stringContaining('has failed over') });
    expect(await refused('checkpoint')).toMatchObject({ desc: expect.stringContaining('has failed over') });
    expect(await refused('drill-start')).toMatchObject({ desc: expect.stringContaining('has failed over') });
  });

  it('carries on after a restart: its checkpoint and saved granules are read back, and failover to the checkpoint still restores it', async () => {
    const dir = await scratch();
    const first = await startReplica(dir);
    const random = seededRandom(4);
    await randomWrites(first.nbd, random, 30);
    await first.qmp.execute('checkpoint', { id: 3 });
    const atCheckpoint = await contentsOf(first.path);
    await randomWrites(first.nbd, random, 30);
    const saved = (await first.qmp.execute<Record<string, number>>('query-replica'))['saved-granules'];
    for (const o of open.splice(0).reverse()) await o.close();

    const second = await startReplica(dir, { fresh: false });
    expect(await second.qmp.execute('query-replica')).toMatchObject({ checkpoint: { id: 3 }, 'saved-granules': saved });
    await randomWrites(second.nbd, random, 30);
    await second.qmp.execute('failover', { to: 'checkpoint' });
    expect((await contentsOf(second.path)).equals(atCheckpoint)).toBe(true);
    for (const o of open.splice(0).reverse()) await o.close();

    const third = await startReplica(dir, { fresh: false });
    expect(await third.qmp.execute('query-replica')).toMatchObject({ state: 'failed-over', failover: { to: 'checkpoint' } });
    await expect(access(third.replica.files.buffer)).rejects.toThrow();
  });

  it('refuses a restart with another granularity, and a disk another live process replicates', async () => {
    const dir = await scratch();
    await startReplica(dir);
    for (const o of open.splice(0).reverse()) await o.close();
    await expect(startReplica(dir, { fresh: false, granularity: 4096 })).rejects.toMatchObject({ code: ErrorCode.INVALID_OPTION });

    const files = replicaFilesFor(join(dir, 'disk.img'));
    const state = JSON.parse((await contentsOf(files.state)).toString()) as Record<string, unknown>;
    await writeFile(files.state, JSON.stringify({ ...state, owner: { pid: process.ppid, host: hostname(), bootId: await bootId() } }));
    await expect(startReplica(dir, { fresh: false })).rejects.toMatchObject({ code: ErrorCode.STATE_IN_USE });
  });
});

describe('a failover drill', () => {
  it('serves a read-write view of the disk as of drill-start while replication goes on, and leaves the replica unchanged', async () => {
    const { nbd, qmp, path } = await startReplica(await scratch());
    const random = seededRandom(5);
    await randomWrites(nbd, random, 30);
    await qmp.execute('checkpoint', { id: 1 });
    const atCheckpoint = await contentsOf(path);
    await randomWrites(nbd, random, 20);
    const atDrillStart = await contentsOf(path);
    const savedBefore = (await qmp.execute<Record<string, number>>('query-replica'))['saved-granules'];

    const { uri } = await qmp.execute<{ uri: string }>('drill-start');
    const drill = await NbdDevice.open({ kind: 'nbd', uri, writable: true, role: 'target' });
    open.push(drill);
    const drillWrites = Promise.all(Array.from({ length: 40 }, (_, i) => drill.write(Buffer.alloc(4096, 0xdd), ((i * 7919) % 256) * 4096)));
    await Promise.all([drillWrites, randomWrites(nbd, random, 40)]);
    const latest = await contentsOf(path);

    const view = Buffer.alloc(SIZE);
    await drill.read(view, 0);
    const expectedView = Buffer.from(atDrillStart);
    for (let i = 0; i < 40; i++) expectedView.fill(0xdd, ((i * 7919) % 256) * 4096, ((i * 7919) % 256) * 4096 + 4096);
    expect(view.equals(expectedView)).toBe(true);
    expect(await qmp.execute('query-replica')).toMatchObject({ drill: { uri, 'written-bytes': 40 * 4096 } });

    await drill.close();
    expect(await qmp.execute('drill-stop')).toMatchObject({ 'written-bytes': 40 * 4096 });
    expect((await contentsOf(path)).equals(latest)).toBe(true);
    const after = await qmp.execute<Record<string, unknown>>('query-replica');
    expect(after).not.toHaveProperty('drill');
    expect(after['saved-granules']).toBeGreaterThanOrEqual(savedBefore);

    await qmp.execute('failover', { to: 'checkpoint' });
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(true);
  });

  it('refuses a second drill while one runs', async () => {
    const { qmp } = await startReplica(await scratch());
    await qmp.execute('drill-start');
    await expect(qmp.execute('drill-start')).rejects.toBeInstanceOf(QmpCommandError);
    await qmp.execute('drill-stop');
  });
});

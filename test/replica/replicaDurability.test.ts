/**
 * `durability: 'process' | 'power'` across restarts: a process-mode replica found on another boot
 * (a reboot, maybe a power loss) cannot vouch for its checkpoint buffer, and says so, until its
 * next checkpoint; a power-mode one, or one restarted on the same boot, is trusted as before.
 * A reboot is played by rewriting the boot ids in the state file.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { Replica } from '../../src/replica/Replica.js';
import type { ReplicaDurability } from '../../src/replica/CheckpointBuffer.js';
import { replicaFilesFor } from '../../src/replica/replicaFiles.js';
import { bootId } from '../../src/state/JobStateFile.js';
import { QmpClient, QmpCommandError } from '../helpers/qmpClient.js';
import { seededRandom } from '../helpers/random.js';
import { useScratchDir } from '../helpers/scratch.js';
import { contentsOf, randomDisk } from './replicaKit.js';

const scratch = useScratchDir();
const G = 64 << 10;
const SIZE = 32 * G;
const OTHER_BOOT = '00000000-0000-4000-8000-000000000000';

const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close().catch(() => {});
});

async function closeAll(): Promise<void> {
  for (const o of open.splice(0).reverse()) await o.close();
}

/** A replica of the disk in `dir` (a new random one unless `fresh` is false) and its control socket. */
async function startReplica(dir: string, durability: ReplicaDurability | undefined, fresh = true) {
  if (fresh) await (await randomDisk(dir, SIZE)).device.close();
  const replica = await Replica.start({
    disk: join(dir, 'disk.img'),
    export: `nbd+unix:///replica?socket=${join(dir, 'nbd.sock')}`,
    control: join(dir, 'control.sock'),
    ...(durability && { durability }),
  });
  open.push(replica);
  const qmp = await QmpClient.connect(join(dir, 'control.sock'));
  open.push(qmp);
  return { replica, qmp, path: join(dir, 'disk.img') };
}

/** Random 4 KiB writes through the replica's copy-before-write. */
async function randomWrites(replica: Replica, random: () => number, count: number): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, () => replica.device.write(Buffer.alloc(4096, Math.floor(random() * 256)), 4096 * Math.floor(random() * (SIZE / 4096)))),
  );
}

function statePath(dir: string): string {
  return replicaFilesFor(join(dir, 'disk.img')).state;
}

async function readState(dir: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(statePath(dir), 'utf8')) as Record<string, unknown>;
}

/** The state file as a run on another boot left it (the replica stopped). */
async function asIfRebooted(dir: string): Promise<void> {
  const state = await readState(dir);
  const durability = state.durability as Record<string, unknown>;
  const owner = state.owner as Record<string, unknown>;
  await writeFile(statePath(dir), JSON.stringify({ ...state, durability: { ...durability, bootId: OTHER_BOOT }, owner: { ...owner, bootId: OTHER_BOOT } }));
}

/** A replica in `mode` with checkpoint 5 and writes since, stopped, then found after a reboot and restarted in `restartMode`. */
async function rebootedReplica(mode: ReplicaDurability, restartMode: ReplicaDurability = mode) {
  const dir = await scratch();
  const random = seededRandom(11);
  const first = await startReplica(dir, mode);
  await randomWrites(first.replica, random, 30);
  await first.qmp.execute('checkpoint', { id: 5 });
  const atCheckpoint = await contentsOf(first.path);
  await randomWrites(first.replica, random, 30);
  await closeAll();
  await asIfRebooted(dir);
  const second = await startReplica(dir, restartMode, false);
  return { ...second, dir, random, atCheckpoint };
}

async function refusal(qmp: QmpClient, name: string, args?: Record<string, unknown>): Promise<string> {
  const err = await qmp.execute(name, args).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(QmpCommandError);
  return (err as QmpCommandError).reply.desc;
}

describe("durability 'process' after a reboot", () => {
  it("says in query-replica that the checkpoint is not trusted, and why", async () => {
    const { qmp } = await rebootedReplica('process');
    const s = await qmp.execute<Record<string, unknown>>('query-replica');
    expect(s).toMatchObject({ checkpoint: { id: 5 }, 'checkpoint-trusted': false, durability: 'process' });
    expect(s['untrusted-reason']).toContain(OTHER_BOOT);
  });

  it("refuses failover to 'checkpoint' with BM_ERR_STATE_MISMATCH, and leaves the replica replicating", async () => {
    const { qmp } = await rebootedReplica('process');
    expect(await refusal(qmp, 'failover', { to: 'checkpoint' })).toContain(`[${ErrorCode.STATE_MISMATCH}]`);
    expect(await qmp.execute('query-replica')).toMatchObject({ state: 'replicating', 'checkpoint-trusted': false });
  });

  it("still fails over to 'latest', keeping every write", async () => {
    const { replica, qmp, path, random } = await rebootedReplica('process');
    await randomWrites(replica, random, 20);
    const latest = await contentsOf(path);
    expect(await qmp.execute('failover', { to: 'latest' })).toMatchObject({ state: 'failed-over', to: 'latest' });
    expect((await contentsOf(path)).equals(latest)).toBe(true);
  });

  it('keeps the checkpoint untrusted across a further restart on this boot', async () => {
    const { dir } = await rebootedReplica('process');
    await closeAll();
    const again = await startReplica(dir, 'process', false);
    expect(await again.qmp.execute('query-replica')).toMatchObject({ 'checkpoint-trusted': false });
    expect(await refusal(again.qmp, 'failover', { to: 'checkpoint' })).toContain(`[${ErrorCode.STATE_MISMATCH}]`);
  });

  it('trusts the buffer again from the next checkpoint: failover restores that checkpoint exactly', async () => {
    const { replica, qmp, path, random, dir } = await rebootedReplica('process');
    await qmp.execute('checkpoint', { id: 6 });
    const atCheckpoint = await contentsOf(path);
    expect(await qmp.execute('query-replica')).toMatchObject({ checkpoint: { id: 6 }, 'checkpoint-trusted': true });
    expect(await readState(dir)).not.toHaveProperty('untrusted');
    await randomWrites(replica, random, 30);
    await qmp.execute('failover', { to: 'checkpoint' });
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(true);
  });

  it("is untrusted too when restarted in 'power' mode: the earlier run's writes were not synced", async () => {
    const { qmp } = await rebootedReplica('process', 'power');
    expect(await qmp.execute('query-replica')).toMatchObject({ 'checkpoint-trusted': false, durability: 'power' });
    expect(await refusal(qmp, 'failover', { to: 'checkpoint' })).toContain(`[${ErrorCode.STATE_MISMATCH}]`);
  });
});

describe('durability across restarts that are trusted', () => {
  it("durability 'power' is unaffected by a boot id change: failover restores the checkpoint exactly", async () => {
    const { replica, qmp, path, random, atCheckpoint } = await rebootedReplica('power');
    expect(await qmp.execute('query-replica')).toMatchObject({ checkpoint: { id: 5 }, 'checkpoint-trusted': true, durability: 'power' });
    await randomWrites(replica, random, 20);
    await qmp.execute('failover', { to: 'checkpoint' });
    expect((await contentsOf(path)).equals(atCheckpoint)).toBe(true);
  });

  it("durability 'process' restarted on the same boot trusts its buffer: failover restores the checkpoint exactly", async () => {
    const dir = await scratch();
    const random = seededRandom(12);
    const first = await startReplica(dir, 'process');
    await randomWrites(first.replica, random, 30);
    await first.qmp.execute('checkpoint', { id: 1 });
    const atCheckpoint = await contentsOf(first.path);
    await randomWrites(first.replica, random, 30);
    await closeAll();

    const second = await startReplica(dir, 'process', false);
    expect(await second.qmp.execute('query-replica')).toMatchObject({ checkpoint: { id: 1 }, 'checkpoint-trusted': true });
    await second.qmp.execute('failover', { to: 'checkpoint' });
    expect((await contentsOf(second.path)).equals(atCheckpoint)).toBe(true);
  });

  it("a 'power' restart of a 'process' replica on the same boot is trusted, and records 'power' on this boot", async () => {
    const dir = await scratch();
    await startReplica(dir, 'process');
    await closeAll();
    const second = await startReplica(dir, 'power', false);
    expect(await second.qmp.execute('query-replica')).toMatchObject({ 'checkpoint-trusted': true, durability: 'power' });
    expect(await readState(dir)).toMatchObject({ version: 1, durability: { mode: 'power', bootId: await bootId() } });
  });
});

describe('the state file', () => {
  it("is version 2 in 'process' mode, so that a build which knows no durability refuses it", async () => {
    const dir = await scratch();
    await startReplica(dir, 'process');
    expect(await readState(dir)).toMatchObject({ version: 2, durability: { mode: 'process', bootId: await bootId() } });
  });

  it('reads a version 1 file without durability as power mode, trusted', async () => {
    const dir = await scratch();
    await startReplica(dir, undefined);
    await closeAll();
    const { durability: _, ...state } = await readState(dir);
    await writeFile(statePath(dir), JSON.stringify({ ...state, version: 1, owner: { ...(state.owner as object), bootId: OTHER_BOOT } }));
    const second = await startReplica(dir, 'process', false);
    expect(await second.qmp.execute('query-replica')).toMatchObject({ 'checkpoint-trusted': true, durability: 'process' });
  });
});

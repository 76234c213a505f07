/**
 * `blockmirror replica` killed with SIGKILL, for real: writes in flight, a checkpoint in flight,
 * a failover in flight. After each restart the primary resends what it wrote since the last
 * checkpoint (and only that), and failover to the checkpoint must give the disk exactly as of
 * the checkpoint the replica names. Run in both durability modes: in 'process' mode nothing on
 * the write path is fdatasync'ed, and a kill -9 must still leave the restore exact.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { CLI, useLiveCli, type LiveCli } from '../helpers/cli.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { seededRandom } from '../helpers/random.js';
import { useScratchDir } from '../helpers/scratch.js';
import { contentsOf } from './replicaKit.js';

const scratch = useScratchDir();
const live = useLiveCli();
const BLOCK = 4096;
const SIZE = 8 << 20;
const BLOCKS = SIZE / BLOCK;

/** The primary: its own copy of the disk, and the blocks it wrote since the last checkpoint. */
class Primary {
  readonly disk: Buffer;
  readonly dirty = new Set<number>();
  readonly #random: () => number;

  constructor(initial: Buffer, seed: number) {
    this.disk = Buffer.from(initial);
    this.#random = seededRandom(seed);
  }

  /** Writes `count` distinct random blocks to its own disk and sends them; resolves when all are acknowledged. */
  write(nbd: NbdDevice, count: number): Promise<void>[] {
    const blocks = new Set<number>();
    while (blocks.size < count) blocks.add(Math.floor(this.#random() * BLOCKS));
    return [...blocks].map((b) => {
      const data = Buffer.alloc(BLOCK, Math.floor(this.#random() * 256));
      data.copy(this.disk, b * BLOCK);
      this.dirty.add(b);
      return nbd.write(data, b * BLOCK);
    });
  }

  /** After the replica restarted: resends what was written since the last checkpoint. */
  async resend(nbd: NbdDevice): Promise<void> {
    await Promise.all([...this.dirty].map((b) => nbd.write(this.disk.subarray(b * BLOCK, (b + 1) * BLOCK), b * BLOCK)));
    await nbd.flush();
  }
}

/** These run the built command line (`npm test` builds first). */
const unbuilt = existsSync(CLI) ? undefined : `${CLI} is missing: run npm run build first`;

describe.skipIf(unbuilt !== undefined)(`blockmirror replica killed with SIGKILL${unbuilt ? ` (skipped: ${unbuilt})` : ''}`, () => {
  it.each(['power', 'process'] as const)('--durability %s: names the old or the new checkpoint after a kill during a checkpoint, and restores exactly the one it names after kills with writes and a failover in flight', async (durability) => {
    const dir = await scratch();
    const disk = join(dir, 'disk.img');
    const initial = seededRandomBytes(SIZE, 99);
    await writeFile(disk, initial);
    const primary = new Primary(initial, 7);
    const expected = new Map<number | null, Buffer>([[null, Buffer.from(initial)]]);
    const args = ['replica', disk, '--export', `nbd+unix:///replica?socket=${join(dir, 'nbd.sock')}`, '--control', join(dir, 'qmp.sock'), '--durability', durability, '--json'];

    // Round 1: writes, checkpoint 1, more writes, killed with writes in flight.
    let s = await connect(live(args), dir);
    await Promise.all(primary.write(s.nbd, 100));
    await s.nbd.flush();
    await checkpoint(s.qmp, 1, primary, expected);
    await Promise.all(primary.write(s.nbd, 100));
    const inFlight = primary.write(s.nbd, 200).map((p) => p.catch(() => 'lost'));
    await Promise.race(inFlight);
    await kill(s);
    await Promise.all(inFlight);

    // Rounds 2 to 6: restarted; resent; a checkpoint killed in flight, a little later each time.
    let committed = 1;
    for (const [round, delayMs] of [1, 3, 6, 10, 20].entries()) {
      s = await connect(live(args), dir);
      const named = await checkpointId(s.qmp);
      expect(named).toBe(committed);
      expect(await s.qmp.execute('query-replica')).toMatchObject({ durability, 'checkpoint-trusted': true });
      await primary.resend(s.nbd);
      expect((await contentsOf(disk)).equals(primary.disk)).toBe(true);
      await Promise.all(primary.write(s.nbd, 50));
      await s.nbd.flush();
      const id = round + 2;
      expected.set(id, Buffer.from(primary.disk));
      let acknowledged = false;
      void s.qmp.execute('checkpoint', { id }).then(() => (acknowledged = true), () => {});
      await new Promise((r) => setTimeout(r, delayMs));
      await kill(s);

      s = await connect(live(args), dir);
      const after = await checkpointId(s.qmp);
      // The old checkpoint or the new one, never another; the new one if it was acknowledged.
      expect(acknowledged ? [id] : [committed, id]).toContain(after);
      if (after === id) {
        committed = id;
        primary.dirty.clear();
      }
      await s.close();
    }

    // Last: more writes since the checkpoint, then the failover is killed in flight, and run again after the restart.
    s = await connect(live(args), dir);
    expect(await checkpointId(s.qmp)).toBe(committed);
    await primary.resend(s.nbd);
    await Promise.all(primary.write(s.nbd, 300));
    await s.nbd.flush();
    expect((await s.qmp.execute<{ 'saved-granules': number }>('query-replica'))['saved-granules']).toBeGreaterThan(0);
    void s.qmp.execute('failover', { to: 'checkpoint' }).catch(() => {});
    await new Promise((r) => setTimeout(r, 2));
    await kill(s);

    s = await connect(live(args), dir);
    const status = await s.qmp.execute<{ state: string }>('query-replica');
    if (status.state !== 'failed-over') await s.qmp.execute('failover', { to: 'checkpoint' });
    expect((await contentsOf(disk)).equals(expected.get(committed)!)).toBe(true);
    await s.close();
  }, 60_000);
});

/** The id of the checkpoint the replica names. */
async function checkpointId(qmp: QmpClient): Promise<number | null> {
  return (await qmp.execute<{ checkpoint: { id: number | null } }>('query-replica')).checkpoint.id;
}

/** Takes checkpoint `id` (nothing in flight: the primary's guarantee) and remembers the disk as of it. */
async function checkpoint(qmp: QmpClient, id: number, primary: Primary, expected: Map<number | null, Buffer>): Promise<void> {
  await qmp.execute('checkpoint', { id });
  expected.set(id, Buffer.from(primary.disk));
  primary.dirty.clear();
}

interface Connected {
  readonly cli: LiveCli;
  readonly nbd: NbdDevice;
  readonly qmp: QmpClient;
  close(): Promise<void>;
}

/** Waits for the replica to listen, then connects to its export and control socket. */
async function connect(cli: LiveCli, dir: string): Promise<Connected> {
  const listening = await cli.waitFor('listening');
  const nbd = await NbdDevice.open({ kind: 'nbd', uri: listening.uri as string, writable: true, role: 'target' }, { autoReconnect: false, connections: 1 });
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  return {
    cli,
    nbd,
    qmp,
    close: async () => {
      await Promise.all([nbd.close().catch(() => {}), qmp.close().catch(() => {})]);
      cli.signal('SIGTERM');
      await cli.done;
    },
  };
}

/** SIGKILL, then drop the dead connections. */
async function kill(s: Connected): Promise<void> {
  s.cli.signal('SIGKILL');
  const run = await s.cli.done;
  expect(run.signal).toBe('SIGKILL');
  await Promise.all([s.nbd.close().catch(() => {}), s.qmp.close().catch(() => {})]);
}

/** `size` bytes from a seeded generator (the same disk every run). */
function seededRandomBytes(size: number, seed: number): Buffer {
  const random = seededRandom(seed);
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) b.writeUInt32LE(Math.floor(random() * 2 ** 32), i);
  return b;
}

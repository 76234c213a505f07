import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { QmpClient } from '../../dist/control/qmp/QmpClient.js';
import { blockData } from '../fixtures/blockData.mjs';
import { seededRandom } from '../fixtures/prng.mjs';
import { startReplicaProcess } from '../helpers/replica.js';

const PRIMARY = resolve(import.meta.dirname, '../fixtures/replicationPrimary.mjs');

/** What one seed found. */
export interface FailoverRound {
  readonly seed: number;
  readonly to: 'checkpoint' | 'latest';
  /** Checkpoints the primary completed before it was killed, and the one the secondary failed over to. */
  readonly checkpoints: number;
  readonly failedOverTo: number;
  /** The secondary equals the primary's acknowledged writes as of that checkpoint (`latest`: all of them). */
  readonly equal: boolean;
}

/**
 * What the disk may hold after a failover to the latest write: for each block, its last
 * acknowledged version (or the initial contents), or a later one that was issued and not
 * acknowledged when the primary died. Returns the blocks that hold anything else.
 */
function latestMismatches(disk: Buffer, initial: Buffer, journal: string): number[] {
  const acked = new Map<number, number>();
  const issued = new Map<number, number>();
  for (const line of journal.split('\n')) {
    const [kind, b, v] = line.split(' ');
    if (!v) continue;
    const map = kind === 'A' ? acked : issued;
    map.set(Number(b), Math.max(map.get(Number(b)) ?? 0, Number(v)));
  }
  const bad: number[] = [];
  for (let b = 0; b < disk.length / 4096; b++) {
    const got = disk.subarray(b * 4096, (b + 1) * 4096);
    const a = acked.get(b) ?? 0;
    const expected = a === 0 ? initial.subarray(b * 4096, (b + 1) * 4096) : blockData(b, a);
    if (got.equals(expected)) continue;
    const i = issued.get(b) ?? 0;
    if (i > a && got.equals(blockData(b, i))) continue;
    bad.push(b);
  }
  return bad;
}

/**
 * One seed: a secondary process and a primary process (test/fixtures/replicationPrimary.mjs)
 * over loopback TCP; the primary writes and checkpoints every `intervalMs`; at a random moment
 * it is killed with SIGKILL; the secondary fails over to its last checkpoint, which must equal
 * what the primary had acknowledged at that checkpoint's instant, byte for byte; or (`to:
 * 'latest'`) keeps every write, which must hold every write the primary had acknowledged (a write
 * in flight at the kill may have landed or not).
 */
export async function failoverRound(
  dir: string,
  seed: number,
  options: { size?: number; intervalMs?: number; to?: 'checkpoint' | 'latest' } = {},
): Promise<FailoverRound> {
  const to = options.to ?? 'checkpoint';
  const random = seededRandom(seed);
  const size = options.size ?? 16 << 20;
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(dir, 'shadows'), { recursive: true });
  const source = join(dir, 'primary.img');
  const disk = join(dir, 'secondary.img');
  const initial = randomBytes(size);
  await writeFile(source, initial);
  const journal = join(dir, 'journal');
  await writeFile(journal, '');
  await writeFile(disk, Buffer.alloc(size));
  const control = join(dir, 'control.sock');
  const replica = await startReplicaProcess(disk, control, join(dir, 'replica-state'));
  let checkpoints = 0;
  try {
    const primary = fork(PRIMARY, [source, replica.uri, control, join(dir, 'shadows'), String(seed), String(options.intervalMs ?? 200), 'write-blocking', journal], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let stderr = '';
    primary.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((r) => primary.once('exit', () => r()));
    primary.on('message', (m: { checkpoint?: number }) => {
      if (m.checkpoint) checkpoints = m.checkpoint;
    });
    // Killed after its first checkpoint, at a random moment of the next second or so.
    const deadline = Date.now() + 60_000;
    while (checkpoints < 1) {
      if (primary.exitCode !== null || Date.now() > deadline) throw new Error(`the primary never checkpointed: ${stderr}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    await new Promise((r) => setTimeout(r, random() * 1200));
    primary.kill('SIGKILL');
    await exited;
    const client = await QmpClient.connect(control);
    let failedOverTo: number;
    try {
      const done = await client.execute<{ checkpoint: { id: number | null } }>('failover', { to });
      failedOverTo = done.checkpoint.id ?? 0;
    } finally {
      await client.close();
    }
    const image = await readFile(disk);
    const equal =
      to === 'checkpoint'
        ? image.equals(await readFile(join(dir, 'shadows', `${failedOverTo}.img`)))
        : latestMismatches(image, initial, await readFile(journal, 'utf8')).length === 0;
    return { seed, to, checkpoints, failedOverTo, equal };
  } finally {
    replica.child.kill('SIGKILL');
  }
}

/**
 * Continuous replication, two processes over loopback TCP: the secondary is a real
 * `blockmirror replica` process; the primary is the library's Replication in this process, with a
 * writer that keeps a shadow of what it wrote through the primary's job.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { QmpClient } from '../../src/control/qmp/QmpClient.js';
import { Replication } from '../../src/replication/Replication.js';
import { recoverJobState } from '../../src/state/recoverJobState.js';
import { seededRandom } from '../fixtures/prng.mjs';
import { startReplicaProcess, type ReplicaProcess } from '../helpers/replica.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const BLOCK = 4096;
const scratch = useScratchDir();

/** A `blockmirror replica` process over TCP (port 0: a free one); resolves once it serves. */
function startReplica(disk: string, control: string, state: string, port = '0'): Promise<ReplicaProcess> {
  return startReplicaProcess(disk, control, state, { port });
}

/** Writes random blocks through `write` until stopped, keeping the shadow of acknowledged writes. */
class Writer {
  readonly shadow: Buffer;
  #running: Promise<void> | undefined;
  #stop = false;
  written = 0;

  constructor(initial: Buffer, readonly seed: number) {
    this.shadow = Buffer.from(initial);
  }

  start(write: (data: Buffer, offset: number) => Promise<void>, lanes = 4): void {
    this.#stop = false;
    const random = seededRandom(this.seed + this.written);
    const blocks = this.shadow.length / BLOCK;
    const busy = new Set<number>();
    const lane = async (): Promise<void> => {
      while (!this.#stop) {
        let b: number;
        do b = Math.floor(random() * blocks);
        while (busy.has(b));
        busy.add(b);
        const data = randomBytes(BLOCK);
        await write(data, b * BLOCK);
        data.copy(this.shadow, b * BLOCK);
        busy.delete(b);
        this.written += BLOCK;
      }
    };
    this.#running = Promise.all(Array.from({ length: lanes }, lane)).then(() => undefined);
  }

  /** Stops after the writes in flight are acknowledged. */
  async stop(): Promise<void> {
    this.#stop = true;
    await this.#running;
  }
}

async function until(condition: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function setup(size = 16 * MiB) {
  const dir = await scratch();
  const source = join(dir, 'primary.img');
  const disk = join(dir, 'secondary.img');
  const initial = randomBytes(size);
  await writeFile(source, initial);
  await writeFile(disk, Buffer.alloc(size));
  const control = join(dir, 'control.sock');
  const replica = await startReplica(disk, control, join(dir, 'replica-state'));
  return { dir, source, disk, initial, control, replica };
}

async function failover(control: string, to: 'checkpoint' | 'latest'): Promise<void> {
  const client = await QmpClient.connect(control);
  try {
    await client.execute('failover', { to });
  } finally {
    await client.close();
  }
}

describe('replication to a blockmirror replica', () => {
  it('fails over to the last checkpoint: the secondary equals the primary as of that checkpoint, byte for byte', async () => {
    const { source, disk, initial, control, replica } = await setup();
    const replication = await Replication.start({ disks: [{ source, secondary: replica.uri, control }] });
    try {
      await until(() => replication.state === 'replicating', 'the initial sync');
      const job = replication.jobs[0]!;
      const writer = new Writer(initial, 1);
      writer.start((d, o) => job.device.write(d, o));
      await new Promise((r) => setTimeout(r, 200));
      await writer.stop();
      const atCheckpoint = Buffer.from(writer.shadow);
      const c = await replication.checkpoint();
      expect(c.id).toBe(1);
      writer.start((d, o) => job.device.write(d, o)); // after the checkpoint: to be undone by the failover
      await new Promise((r) => setTimeout(r, 200));
      await writer.stop();
      await replication.stop();
      await failover(control, 'checkpoint');
      expect((await readFile(disk)).equals(atCheckpoint)).toBe(true);
    } finally {
      await replication.stop();
      replica.child.kill('SIGKILL');
    }
  });

  it('in write-blocking mode, fails over to the latest write: the secondary holds every acknowledged write', async () => {
    const { source, disk, initial, control, replica } = await setup();
    const replication = await Replication.start({ disks: [{ source, secondary: replica.uri, control }], checkpointInterval: 50 });
    try {
      await until(() => replication.state === 'replicating', 'the initial sync');
      const job = replication.jobs[0]!;
      const writer = new Writer(initial, 2);
      writer.start((d, o) => job.device.write(d, o));
      await new Promise((r) => setTimeout(r, 400)); // checkpoints every 50 ms meanwhile
      await writer.stop();
      expect(replication.status().checkpoint.id).toBeGreaterThan(0);
      replica.child.kill('SIGKILL'); // the primary dies... as far as the secondary can tell: it is gone
      await replication.stop();
    } finally {
      await replication.stop();
    }
    const again = await startReplica(disk, control, join(disk, '..', 'replica-state'));
    try {
      await failover(control, 'latest');
      expect((await readFile(disk)).equals(await readFile(source))).toBe(true);
    } finally {
      again.child.kill('SIGKILL');
    }
  });

  it('goes on through an outage of the secondary and then sends only what it missed', async () => {
    const { dir, source, disk, initial, control, replica } = await setup();
    const replication = await Replication.start({ disks: [{ source, secondary: replica.uri, control }] });
    let restarted: { child: ChildProcess; uri: string } | undefined;
    try {
      await until(() => replication.state === 'replicating', 'the initial sync');
      const job = replication.jobs[0]!;
      const writer = new Writer(initial, 3);
      await replication.checkpoint();
      const port = new URL(replica.uri).port;
      replica.child.kill('SIGKILL');
      await new Promise((r) => replica.child.once('close', r));
      const before = writer.written;
      writer.start((d, o) => job.device.write(d, o)); // the primary's writers do not wait for the secondary
      await until(() => replication.state === 'disconnected', 'the outage to be seen');
      await new Promise((r) => setTimeout(r, 300));
      await writer.stop();
      const duringOutage = writer.written - before;
      // The secondary comes back on the same port, with its disk and buffer as the kill left them.
      restarted = await startReplica(disk, control, join(dir, 'replica-state'), port);
      const resynced = new Promise<{ bytes: number }>((r) => replication.once('resynced', r));
      const { bytes } = await resynced;
      expect(bytes).toBeGreaterThan(0);
      expect(bytes).toBeLessThanOrEqual(duringOutage + 4 * MiB); // what was written meanwhile (plus what the kill may have left unflushed), not the image
      await until(() => replication.state === 'replicating', 'replicating again');
      const c = await replication.checkpoint();
      expect(c.id).toBe(2);
      await replication.stop();
      await failover(control, 'checkpoint');
      expect((await readFile(disk)).equals(writer.shadow)).toBe(true);
    } finally {
      await replication.stop();
      restarted?.child.kill('SIGKILL');
    }
  });

  it('with a state directory, keeps what the secondary missed across a restart of the primary, and sends only that', async () => {
    const { dir, source, disk, control, replica } = await setup();
    const state = join(dir, 'primary-state');
    let replication = await Replication.start({ disks: [{ source, secondary: replica.uri, control, state }] });
    let restarted: { child: ChildProcess; uri: string } | undefined;
    try {
      await until(() => replication.state === 'replicating', 'the initial sync');
      // In sync, the job checkpoints its state directory: until then it still counts the initial copy as not durable.
      while ((await recoverJobState(state)).bitmapBytes > 0) await new Promise((r) => setTimeout(r, 10));
      const port = new URL(replica.uri).port;
      replica.child.kill('SIGKILL');
      await new Promise((r) => replica.child.once('close', r));
      const job = replication.jobs[0]!;
      for (let i = 0; i < 10; i++) await job.device.write(randomBytes(BLOCK), i * MiB); // the secondary misses these
      await replication.stop(); // the primary goes down too; its state directory keeps the ten blocks
      restarted = await startReplica(disk, control, join(dir, 'replica-state'), port);
      replication = await Replication.start({ disks: [{ source, secondary: restarted.uri, control, state }] });
      await until(() => replication.state === 'replicating', 'the resync');
      const copied = replication.jobs[0]!.progress().bytesCopied;
      expect(copied).toBeGreaterThanOrEqual(10 * BLOCK);
      expect(copied).toBeLessThan(MiB); // the ten blocks, not the image
      await replication.stop();
      await failover(control, 'latest');
      expect((await readFile(disk)).equals(await readFile(source))).toBe(true);
    } finally {
      await replication.stop();
      restarted?.child.kill('SIGKILL');
    }
  });
});

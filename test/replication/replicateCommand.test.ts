/** `blockmirror replicate` through the command line: its disks, its usage errors. */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { QmpClient } from '../../src/control/qmp/QmpClient.js';
import { runCli, useLiveCli } from '../helpers/cli.js';
import { startReplicaProcess } from '../helpers/replica.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const startCli = useLiveCli();

async function replica(dir: string, name: string): Promise<{ child: ChildProcess; uri: string; control: string; disk: string }> {
  const disk = join(dir, `${name}.img`);
  await writeFile(disk, Buffer.alloc(4 * MiB));
  const control = join(dir, `${name}.sock`);
  const { child, uri } = await startReplicaProcess(disk, control, join(dir, `${name}-state`));
  return { child, uri, control, disk };
}

describe('blockmirror replicate', () => {
  it('replicates two disks given with --disk, and checkpoints them at one instant on command', async () => {
    const dir = await scratch();
    const a = await replica(dir, 'a');
    const b = await replica(dir, 'b');
    try {
      const sources = [join(dir, 'pa.img'), join(dir, 'pb.img')];
      for (const s of sources) await writeFile(s, randomBytes(4 * MiB));
      const monitor = join(dir, 'primary.sock');
      const cli = startCli([
        'replicate',
        '--disk', `source=${sources[0]},secondary=${a.uri},control=${a.control}`,
        '--disk', `source=${sources[1]},secondary=${b.uri},control=${b.control}`,
        '--monitor', monitor, '--json',
      ]);
      await cli.waitFor('start');
      await cli.waitFor('state', 30_000); // syncing, then replicating
      const q = await QmpClient.connect(monitor);
      let status = await q.execute<{ state: string }>('query-replication');
      for (let i = 0; status.state !== 'replicating' && i < 600; i++) {
        await new Promise((r) => setTimeout(r, 50));
        status = await q.execute<{ state: string }>('query-replication');
      }
      const c = await q.execute<{ id: number }>('checkpoint');
      expect(c.id).toBe(1);
      await q.close();
      cli.signal('SIGINT');
      expect((await cli.done).code).toBe(0);
      expect((await readFile(a.disk)).equals(await readFile(sources[0]!))).toBe(true);
      expect((await readFile(b.disk)).equals(await readFile(sources[1]!))).toBe(true);
    } finally {
      a.child.kill('SIGKILL');
      b.child.kill('SIGKILL');
    }
  });

  it('refuses SOURCE SECONDARY without --control, as a usage error', async () => {
    const run = await runCli(['replicate', 'a.img', 'nbd://127.0.0.1:1/x']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('needs --control');
  });

  it('refuses a --disk without its secondary, naming the key', async () => {
    const run = await runCli(['replicate', '--disk', 'source=a.img,control=c.sock']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('--disk needs secondary=');
  });
});

import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import { CLI, runCli, useLiveCli } from '../helpers/cli.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();
const live = useLiveCli();

/** These run the built command line (`npm test` builds first). */
const unbuilt = existsSync(CLI) ? undefined : `${CLI} is missing: run npm run build first`;

describe.skipIf(unbuilt !== undefined)(`blockmirror replica (command line)${unbuilt ? ` (skipped: ${unbuilt})` : ''}`, () => {
  it('prints the export URI once the export and the control socket are ready, keeps its files in --state, and stops on SIGTERM', async () => {
    const dir = await scratch();
    const disk = join(dir, 'disk.img');
    await writeFile(disk, Buffer.alloc(1 << 20, 1));
    const control = join(dir, 'control.sock');
    const cli = live(['replica', disk, '--export', `nbd+unix:///r?socket=${join(dir, 'nbd.sock')}`, '--control', control, '--state', join(dir, 'state'), '--granularity', '16K']);
    const line = await cli.waitForLine(/^serving /);
    const uri = / at (\S+)$/.exec(line)![1]!;
    expect(line).toContain('no checkpoint yet');

    const nbd = await NbdDevice.open({ kind: 'nbd', uri, writable: true, role: 'target' });
    await nbd.write(Buffer.alloc(4096, 2), 0);
    await nbd.close();
    const qmp = await QmpClient.connect(control);
    expect(await qmp.execute('query-replica')).toMatchObject({ granularity: 16384, 'saved-granules': 1 });
    await qmp.close();
    expect(existsSync(join(dir, 'state', 'disk.img.replica-log'))).toBe(true);

    cli.signal('SIGTERM');
    const run = await cli.done;
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toContain('SIGTERM: stopped');
  });

  it("takes --durability process, and refuses another mode as a usage error", async () => {
    const dir = await scratch();
    const disk = join(dir, 'disk.img');
    await writeFile(disk, Buffer.alloc(1 << 20));
    const control = join(dir, 'control.sock');
    const cli = live(['replica', disk, '--export', `nbd+unix:///r?socket=${join(dir, 'nbd.sock')}`, '--control', control, '--durability', 'process']);
    await cli.waitForLine(/^serving /);
    const qmp = await QmpClient.connect(control);
    expect(await qmp.execute('query-replica')).toMatchObject({ durability: 'process', 'checkpoint-trusted': true });
    await qmp.close();
    cli.signal('SIGTERM');
    expect((await cli.done).code).toBe(0);

    const run = await runCli(['replica', disk, '--export', `nbd+unix:///r?socket=${join(dir, 'nbd.sock')}`, '--control', control, '--durability', 'disk']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('power, process');
  });

  it('refuses a granularity that is not a power of two from 4K to 64M as a usage error', async () => {
    const dir = await scratch();
    const disk = join(dir, 'disk.img');
    await writeFile(disk, Buffer.alloc(1 << 20));
    const run = await runCli(['replica', disk, '--export', `nbd+unix:///r?socket=${join(dir, 'nbd.sock')}`, '--control', join(dir, 'c.sock'), '--granularity', '3000']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('BM_ERR_INVALID_OPTION');
  });
});

import { chmod, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashFile } from '../../src/util/imageTools.js';
import { events, permissionsUnenforceable, runCli } from '../helpers/cli.js';
import { writeRandomFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();

describe('blockmirror copy', () => {
  it('copies, prints a one-line summary and exits 0', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 3 * MiB + 7);
    const run = await runCli(['copy', join(dir, 'src.img'), join(dir, 'dst.img')]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^copied 3\.00 MiB in .*data on disk \(buffered reads, buffered writes, fixed\)\n$/);
    expect(await hashFile(join(dir, 'dst.img'))).toBe(await hashFile(join(dir, 'src.img')));
  });

  it('with --json prints NDJSON start, progress and done events and no bar', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    const run = await runCli(['copy', '--json', '--chunk-size', '64K', join(dir, 'src.img'), join(dir, 'dst.img')]);
    expect(run.code).toBe(0);
    const evs = events(run.stdout);
    expect(evs[0]).toMatchObject({ event: 'start', chunkSize: 65536 });
    expect(evs.at(-1)).toMatchObject({ event: 'done', bytes: 2 * MiB, bytesWritten: 2 * MiB, bytesZero: 0 });
    expect(evs.filter((e) => e.event === 'progress').every((e) => typeof e.bytes === 'number')).toBe(true);
    expect(run.stderr).toBe('');
  });

  it('exits 1 on a bad option value, naming the option', async () => {
    const dir = await scratch();
    const run = await runCli(['copy', '--chunk-size', 'lots', join(dir, 'a'), join(dir, 'b')]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('--chunk-size');
  });

  it('exits 1 on an unknown option', async () => {
    const run = await runCli(['copy', '--frobnicate', 'a', 'b']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('unknown option');
  });

  it('exits 2 with a stable code when the source is missing', async () => {
    const dir = await scratch();
    const run = await runCli(['copy', join(dir, 'nope.img'), join(dir, 'dst.img')]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_SOURCE_NOT_FOUND]');
  });

  it('with --json reports a failure as an error event with its code', async () => {
    const dir = await scratch();
    const run = await runCli(['copy', '--json', join(dir, 'nope.img'), join(dir, 'dst.img')]);
    expect(run.code).toBe(2);
    expect(events(run.stdout).at(-1)).toMatchObject({ event: 'error', code: 'BM_ERR_SOURCE_NOT_FOUND' });
  });

  it('exits 2 and leaves the target untouched when the target is smaller than the source', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    const before = await writeRandomFile(join(dir, 'dst.img'), MiB);
    const run = await runCli(['copy', join(dir, 'src.img'), join(dir, 'dst.img')]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_SIZE_MISMATCH]');
    expect((await readFile(join(dir, 'dst.img'))).equals(before)).toBe(true);
  });

  it.skipIf(permissionsUnenforceable() !== undefined)(`exits 2 when the source cannot be read${permissionsUnenforceable() ? ` (skipped: ${permissionsUnenforceable()})` : ''}`, async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), MiB);
    await chmod(join(dir, 'src.img'), 0o000);
    const run = await runCli(['copy', join(dir, 'src.img'), join(dir, 'dst.img')], { enforcePermissions: true });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_SOURCE_UNREADABLE]');
  });

  it('stops on SIGINT, says how far it got and exits 130', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 16 * MiB);
    let sent = false;
    const run = await runCli(['copy', '--json', '--speed', '4M', '--chunk-size', '64K', join(dir, 'src.img'), join(dir, 'dst.img')], {
      onStdout: (chunk, child) => {
        if (!sent && chunk.includes('"progress"')) {
          sent = true;
          child.kill('SIGINT');
        }
      },
    });
    expect(run.code).toBe(130);
    expect(run.stderr).toMatch(/interrupted: copied .* of 16\.0 MiB/);
    expect(events(run.stdout).at(-1)).toMatchObject({ event: 'error', code: 'BM_ERR_ABORTED' });
    expect((await stat(join(dir, 'dst.img'))).size).toBe(16 * MiB);
  });

  it('prints help and exits 0 with --help', async () => {
    const run = await runCli(['copy', '--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('--queue-depth');
  });
});

/** `blockmirror mirror --state`, `mirror --resume` and `blockmirror status`, through the command line. */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashFile } from '../../src/util/imageTools.js';
import { runCli, useLiveCli } from '../helpers/cli.js';
import { writeRandomFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const startCli = useLiveCli();

async function images(size = 8 * MiB): Promise<{ dir: string; src: string; dst: string; state: string }> {
  const dir = await scratch();
  const src = join(dir, 'src.img');
  await writeRandomFile(src, size);
  return { dir, src, dst: join(dir, 'dst.img'), state: join(dir, 'state') };
}

/** A job stopped before it was in sync (SIGINT while throttled), leaving its state directory. */
async function stoppedJob(): Promise<{ src: string; dst: string; state: string }> {
  const paths = await images();
  const cli = startCli(['mirror', paths.src, paths.dst, '--state', paths.state, '--speed', '4M', '--json', '--checkpoint-interval', '20']);
  await cli.waitFor('progress');
  cli.signal('SIGINT');
  expect((await cli.done).code).toBe(130);
  return paths;
}

describe('blockmirror status', () => {
  it('says a pivoted job has the target current and nothing to resume', async () => {
    const { src, dst, state } = await images();
    expect((await runCli(['mirror', src, dst, '--state', state, '--complete-on-ready', '--no-progress'])).code).toBe(0);
    const run = await runCli(['status', state]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain(`current image: target, ${dst}`);
    expect(run.stdout).toContain('nothing to resume');
  });

  it('--json: a stopped job has the source current, bytes left, and can be resumed', async () => {
    const { src, state } = await stoppedJob();
    const run = await runCli(['status', state, '--json']);
    expect(run.code, run.stderr).toBe(0);
    const s = JSON.parse(run.stdout) as Record<string, unknown>;
    expect(s).toMatchObject({ event: 'status', phase: 'stopped', current: 'source', currentImage: src, resumable: true, running: false, consistent: false });
    expect(s.leftBytes).toBeGreaterThan(0);
    expect(s.leftBytes).toBeLessThanOrEqual(8 * MiB);
  });

  it('fails with BM_ERR_STATE_MISSING on a directory without job state', async () => {
    const run = await runCli(['status', await scratch()]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('BM_ERR_STATE_MISSING');
  });

  it('fails on a damaged activity log with its code and the way back (verify)', async () => {
    const { state } = await stoppedJob();
    const log = await readFile(join(state, 'activity.log'));
    log[70] = log[70]! ^ 0xff; // inside the snapshot record
    await writeFile(join(state, 'activity.log'), log);
    const run = await runCli(['status', state]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('BM_ERR_LOG_CORRUPT');
    expect(run.stderr).toContain('blockmirror verify');
  });

  it('fails on a state.json cut short with BM_ERR_STATE_CORRUPT', async () => {
    const { state } = await stoppedJob();
    const text = await readFile(join(state, 'state.json'), 'utf8');
    await writeFile(join(state, 'state.json'), text.slice(0, text.length / 2));
    const run = await runCli(['status', state, '--json']);
    expect(run.code).toBe(2);
    expect(run.stdout).toContain('BM_ERR_STATE_CORRUPT');
  });
});

describe('blockmirror mirror --resume', () => {
  it('copies what was left and completes to a target equal to the source', async () => {
    const { src, dst, state } = await stoppedJob();
    const run = await runCli(['mirror', '--resume', state, '--complete-on-ready', '--no-progress']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/resuming job mirror-\d+ of .*\(stopped\)/);
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('refuses --sync with --resume as a usage error', async () => {
    const { state } = await stoppedJob();
    const run = await runCli(['mirror', '--resume', state, '--sync', 'none']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('BM_ERR_INVALID_OPTION');
  });

  it('needs a source and a target without --resume', async () => {
    const run = await runCli(['mirror']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('needs a SOURCE and a TARGET');
  });

  it('refuses a new job in a directory that holds one, with BM_ERR_STATE_EXISTS', async () => {
    const { src, dst, state } = await stoppedJob();
    const run = await runCli(['mirror', src, dst, '--state', state]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('BM_ERR_STATE_EXISTS');
  });
});

/**
 * `blockmirror mirror` without an export: events, signals (SIGUSR1 completes, SIGINT cancels),
 * exit statuses and option errors. Tests with NBD clients writing through the export are in
 * test/nbd/mirrorExport.test.ts.
 */
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashFile } from '../../src/util/imageTools.js';
import { events, expectExit, milestones, runCli, useLiveCli } from '../helpers/cli.js';
import { writeRandomFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const startCli = useLiveCli();

async function images(size: number): Promise<{ dir: string; src: string; dst: string }> {
  const dir = await scratch();
  const src = join(dir, 'src.img');
  await writeRandomFile(src, size);
  return { dir, src, dst: join(dir, 'dst.img') };
}

describe('blockmirror mirror', () => {
  it('--complete-on-ready --json: start, progress, ready, completed, done in order; exits 0 with an identical target', async () => {
    const { src, dst } = await images(24 * MiB + 4096);
    const run = await runCli(['mirror', src, dst, '--complete-on-ready', '--json', '--speed', '64M']);
    expect(run.code, run.stderr).toBe(0);
    const evs = events(run.stdout);
    expect(milestones(evs)).toEqual(['start', 'ready', 'completed', 'done']);
    expect(evs[0]).toMatchObject({ event: 'start', source: src, target: dst, size: 24 * MiB + 4096, export: null, sync: 'full', copyMode: 'background' });
    const progress = evs.filter((e) => e.event === 'progress');
    expect(progress.length).toBeGreaterThan(0);
    for (const p of progress) {
      expect(p).toEqual(
        expect.objectContaining({
          status: expect.any(String),
          len: expect.any(Number),
          offset: expect.any(Number),
          dirtyBytes: expect.any(Number),
          inFlightBytes: expect.any(Number),
          bytesCopied: expect.any(Number),
          copyRate: expect.any(Number),
          dirtyRate: expect.any(Number),
          synced: expect.any(Boolean),
        }),
      );
    }
    expect(progress.some((p) => p.status === 'running' && (p.offset as number) < 24 * MiB)).toBe(true);
    expect(evs.at(-1)).toMatchObject({ event: 'done', status: 'completed', pivoted: true, consistent: true, exitCode: 0, offset: 24 * MiB + 4096 });
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('--json: the done event says how the first pass copied, and that nothing ended it early', async () => {
    const { src, dst } = await images(16 * MiB);
    const run = await runCli(['mirror', src, dst, '--complete-on-ready', '--json']);
    expect(run.code, run.stderr).toBe(0);
    const done = events(run.stdout).at(-1)!;
    expect(done).toMatchObject({ event: 'done', firstPass: { bytesCopied: 16 * MiB, endedBy: null, io: { plan: { read: expect.any(String), write: expect.any(String) } } } });
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('prints a summary without --json', async () => {
    const { src, dst } = await images(2 * MiB);
    const run = await runCli(['mirror', src, dst, '--complete-on-ready']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^completed \(pivoted\): .*dst\.img is a full copy of .*src\.img \(2\.00 MiB copied in .*; first pass: .* reads, .* writes, \w+\)\n$/);
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('waits in ready until SIGUSR1, then completes and exits 0', async () => {
    const { src, dst } = await images(4 * MiB);
    const cli = startCli(['mirror', src, dst, '--json']);
    await cli.waitFor('ready');
    // Still in sync and waiting: no completion without the signal.
    await new Promise((r) => setTimeout(r, 300));
    expect(milestones(cli.events)).toEqual(['start', 'ready']);
    await expectExit(cli, 'SIGUSR1', 0, ['start', 'ready', 'completed', 'done']);
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('SIGUSR1 before ready completes once in sync', async () => {
    const { src, dst } = await images(4 * MiB);
    const cli = startCli(['mirror', src, dst, '--json', '--speed', '8M', '--chunk-size', '256K']);
    await cli.waitFor('start');
    await expectExit(cli, 'SIGUSR1', 0, ['start', 'ready', 'completed', 'done']);
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('SIGINT once ready cancels to a consistent copy and exits 0', async () => {
    const { src, dst } = await images(4 * MiB);
    const cli = startCli(['mirror', src, dst, '--json']);
    await cli.waitFor('ready');
    await expectExit(cli, 'SIGINT', 0, ['start', 'ready', 'cancelled', 'done']);
    const evs = cli.events;
    expect(evs.find((e) => e.event === 'cancelled')).toMatchObject({ consistent: true });
    expect(evs.at(-1)).toMatchObject({ status: 'cancelled', pivoted: false, consistent: true, exitCode: 0 });
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('SIGINT before ready stops at once, says the target is not consistent and exits 130', async () => {
    const { src, dst } = await images(16 * MiB);
    const cli = startCli(['mirror', src, dst, '--json', '--speed', '2M', '--chunk-size', '64K']);
    await cli.waitFor('progress');
    const run = await expectExit(cli, 'SIGINT', 130, ['start', 'cancelled', 'done']);
    expect(run.stderr).toMatch(/interrupted before the mirror was in sync: .*dst\.img is not a consistent copy/);
    const evs = cli.events;
    expect(evs.find((e) => e.event === 'cancelled')).toMatchObject({ consistent: false });
    expect(evs.at(-1)).toMatchObject({ status: 'cancelled', consistent: false, exitCode: 130, code: 'BM_ERR_ABORTED' });
    expect(evs.at(-1)!.offset as number).toBeLessThan(16 * MiB);
  });

  it('SIGTERM once ready cancels to a consistent copy too, in text mode', async () => {
    const { src, dst } = await images(2 * MiB);
    const cli = startCli(['mirror', src, dst]);
    await cli.waitForLine(/in sync: SIGUSR1 completes/, { stream: 'stderr' });
    const run = await expectExit(cli, 'SIGTERM', 0, []);
    expect(run.stdout).toMatch(/^cancelled: .*dst\.img is a consistent copy of .*src\.img as of the cancel/);
  });

  it('--sync none copies nothing that was not written', async () => {
    const { src, dst } = await images(2 * MiB);
    const run = await runCli(['mirror', src, dst, '--sync', 'none', '--complete-on-ready', '--json']);
    expect(run.code, run.stderr).toBe(0);
    expect(events(run.stdout).at(-1)).toMatchObject({ status: 'completed', offset: 0 });
    expect((await readFile(dst)).every((b) => b === 0)).toBe(true);
  });

  it('--copy-mode write-blocking with small granularity and buffer mirrors too', async () => {
    const { src, dst } = await images(3 * MiB);
    const run = await runCli(['mirror', src, dst, '--copy-mode', 'write-blocking', '--granularity', '4K', '--buffer-size', '256K', '--chunk-size', '64K', '--complete-on-ready', '--json']);
    expect(run.code, run.stderr).toBe(0);
    expect(events(run.stdout)[0]).toMatchObject({ copyMode: 'write-blocking', granularity: 4096, bufferSize: 256 * 1024, chunkSize: 65536 });
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  describe('bad options', () => {
    it('an unknown error policy: exit 1, naming the option and the choices', async () => {
      const { src, dst } = await images(MiB);
      const run = await runCli(['mirror', src, dst, '--on-target-error', 'sometimes']);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('--on-target-error');
      expect(run.stderr).toContain('report, ignore, stop, enospc');
      await expect(access(dst)).rejects.toThrow();
    });

    it('an unknown sync or copy mode: exit 1; with --json an error event BM_ERR_INVALID_OPTION', async () => {
      const { src, dst } = await images(MiB);
      expect((await runCli(['mirror', src, dst, '--sync', 'bitmap'])).code).toBe(1);
      const run = await runCli(['mirror', src, dst, '--copy-mode', 'eager', '--json']);
      expect(run.code).toBe(1);
      expect(events(run.stdout).at(-1)).toMatchObject({ event: 'error', code: 'BM_ERR_INVALID_OPTION' });
    });

    it('a bad export URI: exit 1 with BM_ERR_BAD_URI, before the target is created', async () => {
      const { src, dst } = await images(MiB);
      const run = await runCli(['mirror', src, dst, '--export', 'nbd+unix:///disk']);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('[BM_ERR_BAD_URI]');
      await expect(access(dst)).rejects.toThrow();
      const json = await runCli(['mirror', src, dst, '--export', 'http://x/y', '--json']);
      expect(json.code).toBe(1);
      expect(events(json.stdout).at(-1)).toMatchObject({ event: 'error', code: 'BM_ERR_BAD_URI' });
    });

    it('a granularity that is not a power of two: exit 1 with BM_ERR_INVALID_OPTION', async () => {
      const { src, dst } = await images(MiB);
      const run = await runCli(['mirror', src, dst, '--granularity', '3000']);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('[BM_ERR_INVALID_OPTION]');
    });

    it('a missing source: exit 2 with BM_ERR_SOURCE_NOT_FOUND, no target created', async () => {
      const dir = await scratch();
      const run = await runCli(['mirror', join(dir, 'nope.img'), join(dir, 'dst.img'), '--json']);
      expect(run.code).toBe(2);
      expect(events(run.stdout).at(-1)).toMatchObject({ event: 'error', code: 'BM_ERR_SOURCE_NOT_FOUND' });
      expect(run.stderr).toContain('[BM_ERR_SOURCE_NOT_FOUND]');
      await expect(access(join(dir, 'dst.img'))).rejects.toThrow();
    });

    it('a missing argument: exit 1', async () => {
      const run = await runCli(['mirror', 'only-one.img']);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain('needs a SOURCE and a TARGET');
    });
  });

  it('prints help and exits 0 with --help', async () => {
    const run = await runCli(['mirror', '--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('--export <uri>');
    expect(run.stdout).toContain('--complete-on-ready');
  });
});

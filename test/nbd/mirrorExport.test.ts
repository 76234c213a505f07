/**
 * `blockmirror mirror --export`: real NBD clients (qemu-io, nbdinfo, nbdcopy, fio's nbd engine)
 * write through the job's interceptor while it mirrors; SIGUSR1 pivots, SIGINT cancels to a
 * consistent copy; an nbdkit target with the error filter drives the error policies.
 * Each test skips, saying why, where a peer is missing.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashFile } from '../../src/util/imageTools.js';
import { expectExit, milestones, useLiveCli } from '../helpers/cli.js';
import { writeRandomFile } from '../helpers/files.js';
import { imagesIdentical, missing, run, runOk, usePeers } from '../helpers/peers.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const startCli = useLiveCli();
const peers = usePeers();


/** A fresh source image of random data, where its target goes, and an export URI on a Unix socket there. */
async function images(size: number, exportName = ''): Promise<{ dir: string; src: string; dst: string; original: Buffer; uri: string }> {
  const dir = await scratch();
  const src = join(dir, 'src.img');
  const original = await writeRandomFile(src, size);
  return { dir, src, dst: join(dir, 'dst.img'), original, uri: `nbd+unix:///${exportName}?socket=${join(dir, 'm.sock')}` };
}

/** `buf` with `data` written at `offset` (a copy). */
function written(buf: Buffer, offset: number, data: Buffer): Buffer {
  const out = Buffer.from(buf);
  data.copy(out, offset);
  return out;
}

describe.skipIf(missing('qemu-io', 'nbdinfo').length > 0)('mirror --export with qemu-io and nbdinfo', () => {
  it('writes land in the source while mirroring and in the target after SIGUSR1; the export serves the target until SIGTERM', async () => {
    const { src, dst, original, uri } = await images(8 * MiB, 'disk');
    const cli = startCli(['mirror', src, dst, '--export', uri, '--json']);
    expect(await cli.waitFor('start')).toMatchObject({ export: uri, size: 8 * MiB });

    const info = JSON.parse(await runOk('nbdinfo', ['--json', uri])) as { exports: Record<string, unknown>[] };
    expect(info.exports[0]).toMatchObject({
      'export-name': 'disk',
      'export-size': 8 * MiB,
      is_read_only: false,
      can_flush: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
    });
    expect(info.exports[0]!.description).toBe(`${src} (mirrored to ${dst})`);

    await cli.waitFor('ready');
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1M 64k', '-c', 'write -z 3M 128k', '-c', 'flush', uri]);
    const beforePivot = written(written(original, MiB, Buffer.alloc(64 << 10, 0xab)), 3 * MiB, Buffer.alloc(128 << 10));
    expect((await readFile(src)).equals(beforePivot)).toBe(true);

    cli.signal('SIGUSR1');
    await cli.waitFor('completed');
    // After the pivot the export serves the target: reads see it, writes go to it alone.
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 1M 64k', '-c', 'write -P 0xcd 5M 64k', uri]);
    await expectExit(cli, 'SIGTERM', 0, ['start', 'ready', 'completed', 'done']);
    expect((await readFile(src)).equals(beforePivot)).toBe(true);
    expect((await readFile(dst)).equals(written(beforePivot, 5 * MiB, Buffer.alloc(64 << 10, 0xcd)))).toBe(true);
  });

  it('SIGINT once ready cancels: the target equals the source with every write before the cancel; exit 0, export closed', async () => {
    const { src, dst, uri } = await images(8 * MiB);
    const cli = startCli(['mirror', src, dst, '--export', uri, '--json']);
    await cli.waitFor('ready');
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 192k', '-c', 'write -P 0xa5 7M 1M', uri]);
    await expectExit(cli, 'SIGINT', 0, ['start', 'ready', 'cancelled', 'done']);
    expect(cli.events.find((e) => e.event === 'cancelled')).toMatchObject({ consistent: true });
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 192k', '-c', 'read -P 0xa5 7M 1M', dst]);
    expect((await run('nbdinfo', ['--size', uri])).code).not.toBe(0);
  });

  it('--copy-mode write-blocking: a write is on the target as soon as it is acknowledged', async () => {
    const { src, dst, uri } = await images(4 * MiB);
    const cli = startCli(['mirror', src, dst, '--export', uri, '--copy-mode', 'write-blocking', '--json']);
    await cli.waitFor('ready');
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 2M 100k', uri]);
    // Still ready, nothing cancelled or completed: the target has the write already.
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x77 2M 100k', dst]);
    await expectExit(cli, 'SIGINT', 0, ['start', 'ready', 'cancelled', 'done']);
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });

  it('with --complete-on-ready the export closes and the command exits once the job has completed', async () => {
    const { src, dst, uri } = await images(2 * MiB);
    const cli = startCli(['mirror', src, dst, '--export', uri, '--complete-on-ready', '--json']);
    await expectExit(cli, undefined, 0, ['start', 'ready', 'completed', 'done']);
    expect(await hashFile(dst)).toBe(await hashFile(src));
  });
});

describe.skipIf(missing('qemu-io', 'nbdinfo', 'nbdcopy', 'qemu-img').length > 0)('mirror --export over TCP with several clients at once', () => {
  it('two writers and two readers at once while the job runs; after SIGUSR1 the target equals the source', async () => {
    const { dir, src, dst } = await images(16 * MiB);
    const cli = startCli(['mirror', src, dst, '--export', 'nbd://:0/disk', '--speed', '16M', '--json']);
    const uri = (await cli.waitFor('start')).export as string;
    expect(uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/disk$/);
    const [, , map, size] = await Promise.all([
      runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x12 9M 512k', uri]),
      runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 4M 1M', '-c', 'write -z 12M 2M', uri]),
      runOk('nbdinfo', ['--map', uri]),
      runOk('nbdinfo', ['--size', uri]),
      runOk('nbdcopy', [uri, join(dir, 'out.img')]),
    ]);
    expect(size.trim()).toBe(String(16 * MiB));
    expect(map).toMatch(/data/);
    cli.signal('SIGUSR1');
    await cli.waitFor('completed');
    await expectExit(cli, 'SIGTERM', 0, ['start', 'ready', 'completed', 'done']);
    expect(await imagesIdentical(src, dst)).toBe(true);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 0 1M', '-c', 'read -P 0x12 9M 512k', '-c', 'read -P 0x22 4M 1M', '-c', 'read -P 0 12M 2M', dst]);
  });
});

describe.skipIf(missing('fio', 'qemu-img').length > 0)('fio (ioengine=nbd) writing through the export during a mirror', () => {
  it('random writes land on both sides: after fio stops and SIGUSR1 completes, qemu-img compare says identical', async () => {
    const size = 64 * MiB;
    const { src, dst, uri } = await images(size);
    const originalHash = await hashFile(src);
    // Slow enough that fio's writes overlap the bulk copy, on extents already copied and not yet.
    const cli = startCli(['mirror', src, dst, '--export', uri, '--speed', '64M', '--json']);
    await cli.waitFor('start');
    const fio = await run('fio', [
      '--name=w',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=16k',
      `--size=${size}`,
      '--io_size=8M',
      '--rate=8m',
      '--iodepth=8',
      '--refill_buffers',
      '--output-format=json',
    ]);
    expect(fio.code, fio.stderr).toBe(0);
    const job = (JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number } }[] }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(8 * MiB);
    // fio has stopped: every write was acknowledged before the pivot, so both sides must hold them all.
    cli.signal('SIGUSR1');
    const completed = await cli.waitFor('completed');
    await expectExit(cli, 'SIGTERM', 0, ['start', 'ready', 'completed', 'done']);
    // Writes that hit extents already copied dirtied them again: the job's work grew past the image.
    expect(completed.len as number).toBeGreaterThan(size);
    expect(await hashFile(src)).not.toBe(originalHash);
    expect(await imagesIdentical(src, dst)).toBe(true);
  });
});

describe.skipIf(missing('nbdkit', 'qemu-img').length > 0)('mirror into an nbdkit target that fails writes (error filter)', () => {
  async function failingTarget(dir: string, errno: string): Promise<{ uri: string; flag: string }> {
    const sock = join(dir, 't.sock');
    const flag = join(dir, 'fail-now');
    await writeFile(flag, '');
    await peers.nbdkit(['-U', sock, '--filter=error', 'memory', '8M', `error=${errno}`, 'error-pwrite-rate=1', `error-pwrite-file=${flag}`]);
    return { uri: `nbd+unix:///?socket=${sock}`, flag };
  }

  it('policy report: the job fails, exit 2, error events then done with BM_ERR_JOB_FAILED', async () => {
    const { dir, src } = await images(8 * MiB);
    const { uri } = await failingTarget(dir, 'EIO');
    const cli = startCli(['mirror', src, uri, '--complete-on-ready', '--json']);
    const result = await cli.done;
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('[BM_ERR_JOB_FAILED]');
    expect(cli.events.find((e) => e.event === 'error')).toMatchObject({ code: 'BM_ERR_IO', operation: 'write', errno: 'EIO', action: 'report' });
    expect(cli.events.at(-1)).toMatchObject({ event: 'done', status: 'failed', exitCode: 2, code: 'BM_ERR_JOB_FAILED' });
  });

  it('policy enospc: the job pauses on ENOSPC; SIGUSR2 resumes it once space is back, and it completes', async () => {
    const { dir, src } = await images(8 * MiB);
    const { uri, flag } = await failingTarget(dir, 'ENOSPC');
    const cli = startCli(['mirror', src, uri, '--on-target-error', 'enospc', '--complete-on-ready', '--json']);
    expect(await cli.waitFor('error')).toMatchObject({ errno: 'ENOSPC', action: 'stop' });
    // Paused, not failed: it waits (progress says so) until told to resume.
    await new Promise((r) => setTimeout(r, 300));
    expect(cli.events.filter((e) => e.event === 'progress').at(-1)).toMatchObject({ status: 'paused' });
    await rm(flag);
    cli.signal('SIGUSR2');
    const result = await cli.done;
    expect(result.code, result.stderr).toBe(0);
    expect(milestones(cli.events).filter((e) => e !== 'error')).toEqual(['start', 'ready', 'completed', 'done']);
    expect(await imagesIdentical(src, uri)).toBe(true);
  });
});

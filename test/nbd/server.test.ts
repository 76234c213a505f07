/**
 * Our NBD server against real clients: nbdinfo, qemu-img, nbdcopy, qemu-io, fio (ioengine=nbd).
 * The image is served by `blockmirror serve` (the CLI) or in-process with serveNbd.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileDevice } from '../../src/io/FileDevice.js';
import { serveNbd, type NbdServer } from '../../src/io/nbd/NbdServer.js';
import { copyImage } from '../../src/index.js';
import { makeSampleImage } from '../../src/util/imageTools.js';
import { writeRandomFile } from '../helpers/files.js';
import { imagesIdentical, missing, run, runOk, usePeers } from '../helpers/peers.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();
const peers = usePeers();
const cli = join(import.meta.dirname, '../../dist/cli/bin.js');

let served: { server: NbdServer; device: FileDevice } | undefined;
afterEach(async () => {
  await served?.server.close();
  await served?.device.close();
  served = undefined;
});

/** Serves `image` in-process at `uri`; returns the URI clients use (with the real port). */
async function serveInProcess(image: string, uri: string, readOnly = false): Promise<string> {
  const device = await FileDevice.open({ kind: 'file', path: image, writable: !readOnly });
  const { server, uri: bound } = await serveNbd(device, uri, { readOnly, description: 'test image' });
  served = { server, device };
  return bound;
}


describe.skipIf(missing('nbdinfo', 'qemu-img', 'nbdcopy').length > 0)('blockmirror serve (CLI) with nbdinfo, qemu-img, nbdcopy', () => {
  it('is listed and described by nbdinfo, identical by qemu-img compare, copied out by nbdcopy, and stops on SIGTERM', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    await makeSampleImage(image, { size: 12 * MiB, holeFraction: 0.5 });
    const sock = join(dir, 'bm.sock');
    const { peer, line, child } = await peers.spawnUntil(
      'node',
      [cli, 'serve', image, '--export', `nbd+unix:///disk?socket=${sock}`, '--description', 'sample disk'],
      /^serving /,
    );
    expect(line).toBe(`serving ${image} (12.0 MiB, writable) at nbd+unix:///disk?socket=${sock}`);
    const uri = `nbd+unix:///disk?socket=${sock}`;

    const list = await runOk('nbdinfo', ['--list', `nbd+unix:///?socket=${sock}`]);
    expect(list).toMatch(/export="disk":/);
    expect(list).toMatch(/description: sample disk/);

    const info = JSON.parse(await runOk('nbdinfo', ['--json', uri])) as { exports: Record<string, unknown>[] };
    expect(info.exports[0]).toMatchObject({
      'export-name': 'disk',
      'export-size': 12 * MiB,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
      contexts: ['base:allocation'],
      block_size_minimum: 1,
      block_size_maximum: 32 * MiB,
    });

    expect(await imagesIdentical(image, uri)).toBe(true);
    await runOk('nbdcopy', [uri, join(dir, 'out.img')]);
    expect((await readFile(join(dir, 'out.img'))).equals(await readFile(image))).toBe(true);

    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    peer.kill('SIGTERM');
    expect(await exited).toBe(0);
  });

  it('serves read-only with --read-only, over TCP on 127.0.0.1 with port 0', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    const before = await writeRandomFile(image, 2 * MiB);
    const { line } = await peers.spawnUntil('node', [cli, 'serve', image, '--read-only', '--export', 'nbd://127.0.0.1:0/ro'], /^serving /);
    const uri = /at (nbd:\/\/127\.0\.0\.1:\d+\/ro)$/.exec(line)![1]!;
    const info = JSON.parse(await runOk('nbdinfo', ['--json', uri])) as { exports: Record<string, unknown>[] };
    expect(info.exports[0]).toMatchObject({ 'export-name': 'ro', is_read_only: true, can_trim: false, can_zero: false });
    const write = await run('nbdcopy', [join(dir, 'disk.img'), uri]);
    expect(write.code).not.toBe(0);
    expect((await readFile(image)).equals(before)).toBe(true);
  });
});

describe.skipIf(missing('qemu-io', 'nbdcopy', 'qemu-img').length > 0)('writes into our export land in the image', () => {
  it('qemu-io writes and zeroes, nbdcopy overwrites, several clients at once', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    await writeRandomFile(image, 8 * MiB);
    const uri = await serveInProcess(image, `nbd+unix:///disk?socket=${join(dir, 's.sock')}`);

    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1M 64k', '-c', 'write -z 2M 1M', '-c', 'flush', uri]);
    const img = await readFile(image);
    expect(img.subarray(MiB, MiB + 65536).every((b) => b === 0xab)).toBe(true);
    expect(img.subarray(2 * MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 1M 64k', uri]);

    const other = join(dir, 'other.img');
    await makeSampleImage(other, { size: 8 * MiB, holeFraction: 0.5 });
    // Three clients at once: nbdcopy writing the data, and two readers.
    const [, a, b] = await Promise.all([
      runOk('nbdcopy', ['--flush', other, uri]),
      run('nbdinfo', ['--size', uri]),
      run('nbdinfo', ['--map', uri]),
    ]);
    expect(a.stdout.trim()).toBe(String(8 * MiB));
    expect(b.code).toBe(0);
    expect(await imagesIdentical(other, image)).toBe(true);
    expect(await imagesIdentical(other, uri)).toBe(true);
  });

  it('blockmirror copy from our export and into it', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    await writeFile0(image, 6 * MiB);
    const uri = await serveInProcess(image, `nbd+unix:///?socket=${join(dir, 's.sock')}`);
    const src = join(dir, 'src.img');
    await makeSampleImage(src, { size: 6 * MiB, holeFraction: 0.5 });
    await copyImage(src, uri);
    expect(await imagesIdentical(src, image)).toBe(true);
    await copyImage(uri, join(dir, 'back.img'));
    expect(await imagesIdentical(src, join(dir, 'back.img'))).toBe(true);
  });
});

describe.skipIf(missing('fio').length > 0)('fio (ioengine=nbd) against our export', () => {
  it('writes random data through the export and verifies it', async () => {
    const dir = await scratch();
    const image = join(dir, 'disk.img');
    await writeFile0(image, 16 * MiB);
    const uri = await serveInProcess(image, `nbd+unix:///?socket=${join(dir, 's.sock')}`);
    const r = await run('fio', [
      '--name=w',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--size=16M',
      '--io_size=4M',
      '--iodepth=16',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_state_save=0', // else fio leaves a state file in the working directory
      '--output-format=json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    // fio prints "connected to NBD server" before its JSON.
    const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { error: number; write: { io_bytes: number } }[] }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(4 * MiB);
  });
});

async function writeFile0(path: string, size: number): Promise<void> {
  await runOk('truncate', ['-s', String(size), path]);
}

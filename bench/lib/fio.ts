/** fio as the benchmarks' writer: random 4 KiB writes at queue depth 8 through an NBD export. */
import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import type { BlockDevice } from '../../src/io/BlockDevice.js';
import { FileDevice } from '../../src/io/FileDevice.js';
import { serveNbd } from '../../src/io/nbd/NbdServer.js';

/** What fio reports of its writes. Latencies in µs. */
export interface WriterStats {
  readonly iops: number;
  readonly p50: number;
  readonly p99: number;
  readonly p999: number;
}

/** Runs fio's nbd engine against `uri` for `seconds`: random 4 KiB writes, queue depth 8. */
export function fio(uri: string, size: number, seconds: number, iops: number): Promise<WriterStats> {
  const args = [
    '--name=writer',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=8',
    '--time_based',
    `--runtime=${seconds}`,
    `--size=${size}`,
    '--output-format=json',
    ...(iops > 0 ? [`--rate_iops=${iops}`] : []),
  ];
  return new Promise((done, fail) => {
    const child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', fail);
    child.on('close', (code) => {
      if (code !== 0) return fail(new Error(`fio exited with ${code}`));
      const write = JSON.parse(out.slice(out.indexOf('{'))).jobs[0].write;
      const pct = write.clat_ns.percentile as Record<string, number>;
      done({ iops: write.iops, p50: pct['50.000000']! / 1000, p99: pct['99.000000']! / 1000, p999: pct['99.900000']! / 1000 });
    });
  });
}

/** fio through an export of `device` (in this process, as the mirror's export is). */
export async function writeThrough(device: BlockDevice, socket: string, size: number, seconds: number, iops: number): Promise<WriterStats> {
  await rm(socket, { force: true });
  const { server, uri } = await serveNbd(device, `nbd+unix:///disk?socket=${socket}`);
  try {
    return await fio(uri, size, seconds, iops);
  } finally {
    await server.close();
  }
}

/** Writes back a file's dirty pages (those of the run before, so the next run does not pay for them). */
export async function writeBack(path: string): Promise<void> {
  const file = await FileDevice.open({ kind: 'file', path, writable: true });
  try {
    await file.flush();
  } finally {
    await file.close();
  }
}

/**
 * The library's own writer: `startMirror` with default options on an image while lanes of this
 * process write 4 KiB random blocks through `job.device` (one write in flight each), for
 * `--seconds`; against the same lanes writing the plain image (a FileDevice), alternating within
 * each round. Reports time to ready and the writer's rate during the job as a share of its rate
 * without it (the issue's target: ready within 20 s, the writer at ≥ 50 %).
 *
 *   npm run bench:lanes -- [--size 1G] [--lanes 8] [--seconds 20] [--rounds 3] [--dir DIR] [--json FILE]
 */
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startMirror } from '../src/index.js';
import { FileDevice } from '../src/io/FileDevice.js';
import { makeSampleImage } from '../src/util/imageTools.js';
import { formatBytes, parseSize } from '../src/util/size.js';
import { writeBack } from './lib/fio.js';
import { machineInfo } from './lib/machine.js';
import { markdownTable, median } from './lib/stats.js';

const BLOCK = 4096;

/** `lanes` writers of random 4 KiB blocks through `write` for `seconds`; resolves with writes per second. */
async function lanes(write: (data: Buffer, offset: number) => Promise<void>, size: number, count: number, seconds: number): Promise<number> {
  const end = performance.now() + seconds * 1000;
  let writes = 0;
  const blocks = size / BLOCK;
  const lane = async (): Promise<void> => {
    const data = Buffer.allocUnsafe(BLOCK);
    while (performance.now() < end) {
      randomFillSync(data);
      await write(data, Math.floor(Math.random() * blocks) * BLOCK);
      writes++;
    }
  };
  await Promise.all(Array.from({ length: count }, lane));
  return writes / seconds;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: '1G' },
      lanes: { type: 'string', default: '8' },
      seconds: { type: 'string', default: '20' },
      rounds: { type: 'string', default: '3' },
      dir: { type: 'string', default: join(process.cwd(), '.bm-bench') },
      json: { type: 'string' },
    },
  });
  const size = parseSize(values.size!, '--size');
  const count = Number(values.lanes);
  const seconds = Number(values.seconds);
  const dir = resolve(values.dir!);
  await mkdir(dir, { recursive: true });
  const src = join(dir, 'lanes-src.img');
  const dst = join(dir, 'lanes-dst.img');
  if (!existsSync(src) || (await stat(src)).size !== size) {
    console.error(`making a ${formatBytes(size)} random source ${src}`);
    await makeSampleImage(src, { size, holeFraction: 0 });
  }
  const runs: Array<{ round: number; plain: number; mirrored: number; readySeconds: number | null }> = [];
  for (let round = 0; round < Number(values.rounds); round++) {
    let plain = 0;
    let mirrored = 0;
    let readySeconds: number | null = null;
    for (const which of round % 2 === 0 ? ['plain', 'mirrored'] : ['mirrored', 'plain']) {
      await writeBack(src);
      if (which === 'plain') {
        const device = await FileDevice.open({ kind: 'file', path: src, writable: true });
        plain = await lanes((d, o) => device.write(d, o), size, count, seconds);
        await device.close();
      } else {
        await rm(dst, { force: true });
        const started = performance.now();
        const job = await startMirror({ source: src, target: dst });
        job.once('ready', () => (readySeconds = (performance.now() - started) / 1000));
        mirrored = await lanes((d, o) => job.device.write(d, o), size, count, seconds);
        await job.cancel({ force: true });
        await job.close();
      }
    }
    runs.push({ round, plain, mirrored, readySeconds });
    console.error(`  round ${round + 1}: alone ${plain.toFixed(0)} writes/s, mirrored ${mirrored.toFixed(0)} (${((100 * mirrored) / plain).toFixed(0)} %), ready ${readySeconds === null ? `not within ${seconds} s` : `at ${(readySeconds as number).toFixed(1)} s`}`);
  }
  const share = median(runs.map((r) => r.mirrored / r.plain));
  const ready = runs.map((r) => r.readySeconds);
  console.log(
    markdownTable(
      ['lanes', 'writer alone, writes/s', 'writer while mirrored, writes/s', 'share', 'ready, s (runs)'],
      [[String(count), median(runs.map((r) => r.plain)).toFixed(0), median(runs.map((r) => r.mirrored)).toFixed(0), `${(100 * share).toFixed(0)} %`, ready.map((s) => (s === null ? 'not ready' : s.toFixed(1))).join(' / ')]],
    ),
  );
  if (values.json) await writeFile(values.json, `${JSON.stringify({ kind: 'lanes', date: new Date().toISOString(), size, lanes: count, seconds, machine: machineInfo(dir), runs }, null, 2)}\n`);
}

await main();

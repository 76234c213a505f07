import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBitmap } from '../../src/bitmap/BitmapFile.js';
import { events, runCli } from '../helpers/cli.js';
import { writeRandomFile } from '../helpers/files.js';
import { useScratchDir } from '../helpers/scratch.js';
import { imagePair } from './imagePair.js';

const KiB = 1024;
const MiB = 1 << 20;
const G = 64 * KiB;
const scratch = useScratchDir();

/** A source (random data with holes) and a copy of it with the bytes at `offsets` flipped. */
async function pair(size: number, offsets: readonly number[] = []): Promise<{ dir: string; source: string; target: string }> {
  return imagePair(await scratch(), size, offsets);
}

const SIZE = 3 * MiB + 1000;
// Granules 0 and 1 (coalesced), 32, and the last partial one (1000 bytes from 3 MiB).
const CHANGED = [10, G + 7, 2 * MiB + 5, SIZE - 1];

describe('blockmirror verify', () => {
  it('says identical and exits 0 for identical images', async () => {
    const { source, target } = await pair(SIZE);
    const run = await runCli(['verify', source, target]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^identical: 3\.00 MiB compared in \S+ m?s\n$/);
  });

  it('lists the differing extents and exits 3 when the images differ', async () => {
    const { source, target } = await pair(SIZE, CHANGED);
    const run = await runCli(['verify', source, target]);
    expect(run.code, run.stderr).toBe(3);
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^differ: 3 extents, 193\.0 KiB \(3\.00 MiB compared in .*\)/);
    expect(lines.slice(1)).toEqual([`  0 +${2 * G} (128.0 KiB)`, `  ${2 * MiB} +${G} (64.0 KiB)`, `  ${3 * MiB} +1000 (1000 B)`]);
  });

  it('lists at most 20 extents, then says how many more', async () => {
    const { source, target } = await pair(4 * MiB, Array.from({ length: 25 }, (_, i) => 2 * i * G + 1));
    const run = await runCli(['verify', source, target]);
    expect(run.code, run.stderr).toBe(3);
    const lines = run.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^differ: 25 extents, /);
    expect(lines).toHaveLength(22);
    expect(lines[21]).toBe('  and 5 more');
  });

  it('with --bitmap writes a clean bitmap file that loads with exactly the differing granules set', async () => {
    const { dir, source, target } = await pair(SIZE, CHANGED);
    const out = join(dir, 'diff.bmp');
    const run = await runCli(['verify', source, target, '--bitmap', out]);
    expect(run.code, run.stderr).toBe(3);
    expect(run.stdout).toContain(`bitmap written to ${out}: 4 of 49 bits of 64.0 KiB set`);
    const { bitmap, consistent, header } = await loadBitmap(out, { size: SIZE, granularity: G });
    expect(consistent).toBe(true);
    expect(header.inUse).toBe(false);
    expect(bitmap.count()).toBe(4);
    expect([...bitmap.extents()]).toEqual([
      [0, 2 * G],
      [2 * MiB, G],
      [3 * MiB, 1000],
    ]);
  });

  it('with --granularity reports at that resolution', async () => {
    const { source, target } = await pair(SIZE, CHANGED);
    const run = await runCli(['verify', '--json', '--granularity', '4K', source, target]);
    expect(run.code, run.stderr).toBe(3);
    const extents = events(run.stdout).filter((e) => e.event === 'extent');
    expect(extents.map((e) => [e.offset, e.length])).toEqual([
      [0, 4 * KiB],
      [G, 4 * KiB],
      [2 * MiB, 4 * KiB],
      [3 * MiB, 1000],
    ]);
  });

  it('with --json prints start, progress, one extent event per extent and done', async () => {
    const { dir, source, target } = await pair(SIZE, CHANGED);
    const out = join(dir, 'diff.bmp');
    const run = await runCli(['verify', '--json', source, target, '--bitmap', out]);
    expect(run.code, run.stderr).toBe(3);
    const evs = events(run.stdout);
    expect(evs[0]).toMatchObject({ event: 'start', source, target, granularity: G, chunkSize: MiB });
    expect(evs.filter((e) => e.event === 'progress').length).toBeGreaterThan(0);
    expect(evs.filter((e) => e.event === 'extent').map((e) => [e.offset, e.length])).toEqual([
      [0, 2 * G],
      [2 * MiB, G],
      [3 * MiB, 1000],
    ]);
    expect(evs.at(-1)).toMatchObject({ event: 'done', bytes: SIZE, identical: false, differingBytes: 3 * G + 1000, extents: 3, bitmap: out });
    expect(run.stderr).toBe('');
  });

  it('with --json reports identical images in done and exits 0', async () => {
    const { source, target } = await pair(SIZE);
    const run = await runCli(['verify', '--json', source, target]);
    expect(run.code, run.stderr).toBe(0);
    const evs = events(run.stdout);
    expect(evs.some((e) => e.event === 'extent')).toBe(false);
    expect(evs.at(-1)).toMatchObject({ event: 'done', bytes: SIZE, identical: true, differingBytes: 0, extents: 0, bitmap: null });
  });

  it('exits 2 with BM_ERR_SIZE_MISMATCH when the target is smaller than the source', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), 2 * MiB);
    await writeRandomFile(join(dir, 'dst.img'), MiB);
    const run = await runCli(['verify', join(dir, 'src.img'), join(dir, 'dst.img')]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_SIZE_MISMATCH]');
  });

  it('exits 2 naming the target when it does not exist', async () => {
    const dir = await scratch();
    await writeRandomFile(join(dir, 'src.img'), MiB);
    const run = await runCli(['verify', join(dir, 'src.img'), join(dir, 'nope.img')]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`target ${join(dir, 'nope.img')} does not exist`);
  });

  it('exits 1 on a granularity that is not a power of two', async () => {
    const { source, target } = await pair(MiB);
    const run = await runCli(['verify', '--granularity', '1000', source, target]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('[BM_ERR_INVALID_OPTION]');
  });

  it('writes a bitmap that blockmirror mirror --sync bitmap repairs the target from, copying only what differs', async () => {
    const { dir, source, target } = await pair(SIZE, CHANGED);
    const bitmap = join(dir, 'diff.bmap');
    expect((await runCli(['verify', '--bitmap', bitmap, source, target])).code).toBe(3);
    const mirror = await runCli(['mirror', '--json', '--sync', 'bitmap', '--bitmap', bitmap, '--complete-on-ready', source, target]);
    expect(mirror.code, mirror.stderr).toBe(0);
    // The job's work (QEMU's len): the four differing granules, the last one partial, and nothing else.
    const done = events(mirror.stdout).find((e) => e.event === 'done')!;
    expect(done.len).toBe(3 * G + (SIZE - 3 * MiB));
    expect((await runCli(['verify', source, target])).code).toBe(0);
  });

  it('refuses mirror --sync bitmap without --bitmap as a usage error', async () => {
    const { source, target } = await pair(MiB);
    const run = await runCli(['mirror', '--sync', 'bitmap', '--complete-on-ready', source, target]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('--sync bitmap and --bitmap FILE go together');
  });
});

/** `blockmirror bitmap ...`, run as a user runs it: the built command in a child process. */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BITMAP_HEADER_BYTES, loadBitmap, markInUse, saveBitmap } from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { useScratchDir } from '../helpers/scratch.js';

const BIN = fileURLToPath(new URL('../../dist/cli/bin.js', import.meta.url));
const scratch = useScratchDir();
const G = 65536;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function blockmirror(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function bitmapFile(dirtyBits: number[], options: { inUse?: boolean } = {}): Promise<string> {
  const bm = DirtyBitmap.create(100 * G, G);
  for (const b of dirtyBits) bm.markBits(b, 1);
  const path = join(await scratch(), 'b.bmp');
  await saveBitmap(path, bm, options);
  return path;
}

describe('blockmirror bitmap info', () => {
  it('prints the header and the dirty count', async () => {
    const run = await blockmirror('bitmap', 'info', await bitmapFile([1, 2, 3]));
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/state:\s+consistent/);
    expect(run.stdout).toMatch(/granularity:\s+64\.0 KiB \(65536 bytes\)/);
    expect(run.stdout).toMatch(/bits:\s+100/);
    expect(run.stdout).toMatch(/dirty:\s+3 bits, 192\.0 KiB/);
  });

  it('prints one JSON object with --json', async () => {
    const run = await blockmirror('bitmap', 'info', await bitmapFile([1, 2, 3]), '--json');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({
      event: 'bitmap-info',
      version: 1,
      inUse: false,
      consistent: true,
      granularity: G,
      size: 100 * G,
      bitCount: 100,
      generation: 1,
      dirtyBits: 3,
      dirtyBytes: 3 * G,
    });
  });

  it('shows the stored bits of a file in use and says it is in use', async () => {
    const run = await blockmirror('bitmap', 'info', await bitmapFile([7], { inUse: true }), '--json');
    expect(JSON.parse(run.stdout)).toMatchObject({ inUse: true, consistent: false, dirtyBits: 1 });
  });

  it('fails with exit 2 and the error code on a corrupt file', async () => {
    const path = await bitmapFile([1]);
    const bytes = await readFile(path);
    bytes[BITMAP_HEADER_BYTES] ^= 0xff;
    await writeFile(path, bytes);
    const run = await blockmirror('bitmap', 'info', path);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_BITMAP_CORRUPT]');
  });
});

describe('blockmirror bitmap clean', () => {
  it('exits 0 for a consistent file with no bit set', async () => {
    const run = await blockmirror('bitmap', 'clean', await bitmapFile([]));
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^clean: /);
  });

  it('exits 2 and says how much is dirty when a bit is set', async () => {
    const run = await blockmirror('bitmap', 'clean', await bitmapFile([99]));
    expect(run.code).toBe(2);
    expect(run.stdout).toMatch(/^not clean: .*1 bits are dirty/);
  });

  it('exits 2 for a file still flagged in use, even with no bit set', async () => {
    const path = await bitmapFile([]);
    await markInUse(path);
    const run = await blockmirror('bitmap', 'clean', path);
    expect(run.code).toBe(2);
    expect(run.stdout).toMatch(/flagged in use/);
  });

  it('exits 2 with the error code for a damaged file', async () => {
    const path = await bitmapFile([]);
    await writeFile(path, (await readFile(path)).subarray(0, 40));
    const run = await blockmirror('bitmap', 'clean', path);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_BITMAP_TRUNCATED]');
  });

  it('exits 2 for a missing file', async () => {
    const run = await blockmirror('bitmap', 'clean', join(await scratch(), 'none.bmp'));
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('[BM_ERR_IO]');
  });

  it('gives its verdict as JSON with --json', async () => {
    const run = await blockmirror('bitmap', 'clean', await bitmapFile([4, 5]), '--json');
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout)).toMatchObject({ event: 'bitmap-clean', clean: false, dirtyBits: 2 });
  });
});

describe('blockmirror bitmap create', () => {
  it('writes a clean bitmap file of the given geometry', async () => {
    const path = join(await scratch(), 'new.bmp');
    const run = await blockmirror('bitmap', 'create', path, '--size', '1G', '--granularity', '1M');
    expect(run.code).toBe(0);
    const { bitmap, consistent } = await loadBitmap(path);
    expect([bitmap.size, bitmap.granularity, bitmap.count(), consistent]).toEqual([2 ** 30, 2 ** 20, 0, true]);
  });

  it('marks every bit with --all-dirty', async () => {
    const path = join(await scratch(), 'new.bmp');
    await blockmirror('bitmap', 'create', path, '--size', '1000000', '--all-dirty');
    expect((await loadBitmap(path)).bitmap.dirtyBytes()).toBe(1_000_000);
  });

  it('refuses to replace an existing file without --force (exit 1)', async () => {
    const path = await bitmapFile([3]);
    const run = await blockmirror('bitmap', 'create', path, '--size', '1G');
    expect(run.code).toBe(1);
    expect((await loadBitmap(path)).bitmap.count()).toBe(1);
    expect((await blockmirror('bitmap', 'create', path, '--size', '1G', '--force')).code).toBe(0);
  });

  it('rejects a granularity that is not a power of two (exit 1)', async () => {
    const run = await blockmirror('bitmap', 'create', join(await scratch(), 'x.bmp'), '--size', '1G', '--granularity', '3000');
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('[BM_ERR_INVALID_OPTION]');
  });
});

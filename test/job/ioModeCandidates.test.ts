import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { deviceSpecFor } from '../../src/io/location.js';
import { ioModeCandidates } from '../../src/job/ioModeCandidates.js';
import { sparseFile, writeRandomFile } from '../helpers/files.js';
import { directIoUnavailable, useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const scratch = useScratchDir();
const noDirect = await directIoUnavailable();
const withDirect = it.skipIf(noDirect !== undefined);
const suffix = noDirect ? ` (skipped: ${noDirect})` : '';

async function files(): Promise<{ source: string; target: string }> {
  const dir = await scratch();
  const source = join(dir, 'src.img');
  const target = join(dir, 'dst.img');
  await writeRandomFile(source, MiB);
  await writeRandomFile(target, MiB);
  return { source, target };
}

async function candidates(size: number, memoryBytes: number) {
  const f = await files();
  const c = await ioModeCandidates(
    deviceSpecFor(f.source, { role: 'source', writable: false }),
    deviceSpecFor(f.target, { role: 'target', writable: true }),
    {},
    { pooled: true, limited: false, size, memoryBytes },
  );
  return c;
}

describe('ioModeCandidates', () => {
  withDirect(`offers both modes on each side for an image small against memory, O_DIRECT writes first${suffix}`, async () => {
    const c = await candidates(GiB, 24 * GiB);
    expect(c).toMatchObject({ readModes: ['buffered', 'direct'], writeModes: ['direct', 'buffered'] });
    expect(c.note).toBeUndefined();
  });

  withDirect(`does not try page-cache writes of an image over a quarter of memory, and says why${suffix}`, async () => {
    const c = await candidates(7 * GiB, 24 * GiB);
    expect(c.writeModes).toEqual(['direct']);
    expect(c.readModes).toEqual(['buffered', 'direct']);
    expect(c.note).toMatch(/page-cache writes not tried: the image is larger than a quarter of memory/);
  });

  withDirect(`uses O_DIRECT on both sides, unmeasured, for an image over half of memory${suffix}`, async () => {
    const c = await candidates(13 * GiB, 24 * GiB);
    expect(c).toMatchObject({ readModes: ['direct'], writeModes: ['direct'] });
    expect(c.why).toMatch(/^not measured: page-cache writes and reads not tried/);
  });

  /** The candidates for a 64 MiB source holding 1 MiB of data, into a sparse target. */
  async function mostlyHoles(memoryBytes?: number) {
    const dir = await scratch();
    const source = await sparseFile(join(dir, 'sparse.img'), 64 * MiB);
    await writeFile(source, randomBytes(MiB), { flag: 'r+' });
    return ioModeCandidates(
      deviceSpecFor(source, { role: 'source', writable: false }),
      deviceSpecFor(await sparseFile(join(dir, 'dst.img'), 64 * MiB), { role: 'target', writable: true }),
      {},
      { pooled: true, limited: false, size: 64 * MiB, ...(memoryBytes ? { memoryBytes } : {}) },
    );
  }

  withDirect(`scans a mostly-hole source for holes, and weighs only its data against memory${suffix}`, async () => {
    // As large against memory as an image whose pages would crowd it out, were they read.
    expect(await mostlyHoles(96 * MiB)).toMatchObject({ holeScan: true, readModes: ['buffered', 'direct'] });
  });

  withDirect(`writes a mostly-hole source's copy with O_DIRECT, and says why page-cache writes were not tried${suffix}`, async () => {
    const c = await mostlyHoles();
    expect(c).toMatchObject({ holeScan: true, writeModes: ['direct'] });
    expect(c.note).toMatch(/page-cache writes not tried: a mostly-hole source's trials hold too little data/);
  });

  withDirect(`does not scan a source read through the page cache when that is asked for${suffix}`, async () => {
    const dir = await scratch();
    const source = await sparseFile(join(dir, 'sparse.img'), 64 * MiB);
    const c = await ioModeCandidates(
      deviceSpecFor(source, { role: 'source', writable: false }),
      deviceSpecFor(join(dir, 'dst.img'), { role: 'target', writable: true }),
      { readMode: 'buffered' },
      { pooled: true, limited: false, size: 64 * MiB },
    );
    expect(c.holeScan).toBe(false);
  });

  withDirect(`does not scan a source mostly allocated${suffix}`, async () => {
    expect((await candidates(GiB, 24 * GiB)).holeScan).toBe(false);
  });

  it.skipIf(noDirect === undefined)('falls back to the page cache where the file system refuses O_DIRECT, whatever the size (runs only where it does)', async () => {
    const c = await candidates(13 * GiB, 24 * GiB);
    expect(c).toMatchObject({ readModes: ['buffered'], writeModes: ['buffered'] });
  });
});

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { saveBitmap } from '../../src/bitmap/BitmapFile.js';
import { DirtyBitmap } from '../../src/bitmap/DirtyBitmap.js';
import { ErrorCode, STATE_HINT, StateError, type ErrorCodeValue } from '../../src/errors.js';
import { encodeRecord, writeActivityLog } from '../../src/state/ActivityLogFile.js';
import {
  JOB_STATE_FORMAT,
  JOB_STATE_VERSION,
  StateFiles,
  currentOwner,
  writeJobState,
  type JobOwner,
  type JobStateRecord,
} from '../../src/state/JobStateFile.js';
import { recoverJobState } from '../../src/state/recoverJobState.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();

const G = 65536;
/** Log extents of 16 granules. */
const E = 16 * G;
/** 41 log extents, the last of 5 granules and 100 bytes. */
const SIZE = 40 * E + 5 * G + 100;
const GENERATION = 6;

/** Bits of the saved bitmap: 4 granules in extent 0, one in extent 20. */
const BITMAP_RANGES: Array<[number, number]> = [
  [0, 4 * G],
  [20 * E + G, G],
];
/** Extents of the log: 0 (holding bitmap bits too) and the short last one. */
const LOG_EXTENTS = [0, 40];

interface DirOptions {
  readonly phase?: JobStateRecord['phase'];
  readonly owner?: JobOwner;
  /** The log's epoch (default: the bitmap's generation). */
  readonly epoch?: number;
  readonly logSize?: number;
  readonly logExtentSize?: number;
  readonly bitmapGranularity?: number;
}

/** A state directory as JobStateStore leaves one while its job runs (see JobStateStore.open). */
async function stateDir(o: DirOptions = {}): Promise<string> {
  const dir = await scratch();
  const phase = o.phase ?? 'copying';
  const granularity = o.bitmapGranularity ?? G;
  const bitmap = DirtyBitmap.create(SIZE, granularity);
  for (const [offset, length] of BITMAP_RANGES) bitmap.mark(offset, length);
  await saveBitmap(join(dir, StateFiles.bitmap), bitmap, { inUse: true, generation: GENERATION });
  await writeActivityLog(
    join(dir, StateFiles.log),
    { extentSize: o.logExtentSize ?? E, size: o.logSize ?? SIZE, epoch: o.epoch ?? GENERATION },
    LOG_EXTENTS,
  );
  const record: JobStateRecord = {
    format: JOB_STATE_FORMAT,
    version: JOB_STATE_VERSION,
    id: 'job-1',
    source: '/images/source.raw',
    target: '/images/target.raw',
    size: SIZE,
    granularity: G,
    extentSize: E,
    phase,
    current: phase === 'pivoted' ? 'target' : 'source',
    consistent: phase === 'ready',
    owner: o.owner ?? (await currentOwner()),
    updated: new Date().toISOString(),
  };
  await writeJobState(dir, record);
  return dir;
}

async function recoverError(dir: string): Promise<StateError> {
  const err = await recoverJobState(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StateError);
  return err as StateError;
}

async function expectCode(dir: string, code: ErrorCodeValue): Promise<StateError> {
  const err = await recoverError(dir);
  expect(err.code).toBe(code);
  return err;
}

const children: ChildProcess[] = [];
afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
  }
});

/** A child process that lives until killed. */
async function liveChild(): Promise<ChildProcess> {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  children.push(child);
  await once(child, 'spawn');
  return child;
}

describe('recoverJobState: a valid directory', () => {
  it('counts as left the union of the bitmap and the log extents', async () => {
    const got = await recoverJobState(await stateDir());
    const lastExtent = SIZE - 40 * E;
    expect(got.bitmapBytes).toBe(5 * G);
    expect(got.logExtents).toBe(2);
    expect(got.logBytes).toBe(E + lastExtent);
    // Extent 0 holds the bitmap's first 4 granules: they count once.
    expect(got.leftBytes).toBe(E + lastExtent + G);
  });

  it('returns as bitmap the union, as ranges', async () => {
    const got = await recoverJobState(await stateDir());
    expect([...got.bitmap!.extents()]).toEqual([
      [0, E],
      [20 * E + G, G],
      [40 * E, SIZE - 40 * E],
    ]);
  });

  it('returns the state, the generation, and no torn tail', async () => {
    const got = await recoverJobState(await stateDir());
    expect(got.state.phase).toBe('copying');
    expect(got.state.current).toBe('source');
    expect(got.generation).toBe(GENERATION);
    expect(got.tornTail).toBe(false);
  });

  it('accepts a log one generation behind the bitmap (a crash between bitmap save and log rewrite)', async () => {
    const got = await recoverJobState(await stateDir({ epoch: GENERATION - 1 }));
    expect(got.leftBytes).toBe(E + (SIZE - 40 * E) + G);
  });

  it('reports a torn last record, without its extents', async () => {
    const dir = await stateDir();
    const logPath = join(dir, StateFiles.log);
    const record = encodeRecord(1, [10]);
    await writeFile(logPath, Buffer.concat([await readFile(logPath), record.subarray(0, record.length - 2)]));
    const got = await recoverJobState(dir);
    expect(got.tornTail).toBe(true);
    expect(got.logExtents).toBe(2);
  });

  it('recovers a stopped job like a running one', async () => {
    const got = await recoverJobState(await stateDir({ phase: 'stopped' }));
    expect(got.state.phase).toBe('stopped');
    expect(got.leftBytes).toBe(E + (SIZE - 40 * E) + G);
  });
});

describe('recoverJobState: a pivoted job', () => {
  it('says the target is current and nothing is left, without reading the bitmap', async () => {
    const dir = await stateDir({ phase: 'pivoted' });
    await rm(join(dir, StateFiles.bitmap));
    await rm(join(dir, StateFiles.log));
    const got = await recoverJobState(dir);
    expect(got.state.current).toBe('target');
    expect(got.leftBytes).toBe(0);
    expect(got.bitmap).toBeUndefined();
  });
});

describe('recoverJobState: parts from different moments or images', () => {
  it('is BM_ERR_STATE_MISMATCH for a log one generation ahead of the bitmap', async () => {
    await expectCode(await stateDir({ epoch: GENERATION + 1 }), ErrorCode.STATE_MISMATCH);
  });

  it('is BM_ERR_STATE_MISMATCH for a log two generations behind the bitmap', async () => {
    await expectCode(await stateDir({ epoch: GENERATION - 2 }), ErrorCode.STATE_MISMATCH);
  });

  it('is BM_ERR_STATE_MISMATCH for a log of another image size', async () => {
    await expectCode(await stateDir({ logSize: SIZE + E }), ErrorCode.STATE_MISMATCH);
  });

  it('is BM_ERR_STATE_MISMATCH for a log with another extent size', async () => {
    await expectCode(await stateDir({ logExtentSize: E / 2 }), ErrorCode.STATE_MISMATCH);
  });

  it('is BM_ERR_BITMAP_GEOMETRY for a bitmap of another granularity', async () => {
    await expectCode(await stateDir({ bitmapGranularity: 2 * G }), ErrorCode.BITMAP_GEOMETRY);
  });

  it('carries the hint in a mismatch', async () => {
    const err = await recoverError(await stateDir({ epoch: GENERATION + 1 }));
    expect(err.message).toContain(STATE_HINT);
  });
});

describe('recoverJobState: damaged parts', () => {
  const bitmapDamage: Array<[name: string, code: ErrorCodeValue, damage: (path: string) => Promise<void>]> = [
    [
      'a flipped body byte',
      ErrorCode.BITMAP_CORRUPT,
      async (p) => {
        const b = await readFile(p);
        b[64]! ^= 0x40;
        await writeFile(p, b);
      },
    ],
    [
      'a flipped header byte',
      ErrorCode.BITMAP_HEADER_CORRUPT,
      async (p) => {
        const b = await readFile(p);
        b[33]! ^= 0x01;
        await writeFile(p, b);
      },
    ],
    ['a cut-short body', ErrorCode.BITMAP_TRUNCATED, (p) => truncate(p, 70)],
    ['an empty file', ErrorCode.BITMAP_EMPTY, (p) => truncate(p, 0)],
    ['another magic', ErrorCode.BITMAP_FOREIGN, (p) => writeFile(p, 'not a bitmap at all')],
  ];

  it.each(bitmapDamage)("keeps the bitmap's code for %s, with the hint", async (_name, code, damage) => {
    const dir = await stateDir();
    await damage(join(dir, StateFiles.bitmap));
    const err = await expectCode(dir, code);
    expect(err.message).toContain(STATE_HINT);
    expect(err.message).toContain(dir);
  });

  const logDamage: Array<[name: string, code: ErrorCodeValue, damage: (path: string) => Promise<void>]> = [
    ['an empty file', ErrorCode.LOG_EMPTY, (p) => truncate(p, 0)],
    ['a file holding only its header', ErrorCode.LOG_TRUNCATED, (p) => truncate(p, 64)],
    ['another magic', ErrorCode.LOG_FOREIGN, (p) => writeFile(p, 'BMIRDBMP and more')],
    [
      'a damaged snapshot',
      ErrorCode.LOG_CORRUPT,
      async (p) => {
        const b = await readFile(p);
        b[b.length - 1]! ^= 0x01;
        await writeFile(p, b);
      },
    ],
  ];

  it.each(logDamage)('is a StateError with the log code for %s, with the hint', async (_name, code, damage) => {
    const dir = await stateDir();
    await damage(join(dir, StateFiles.log));
    const err = await expectCode(dir, code);
    expect(err.message).toContain(STATE_HINT);
  });

  it('is BM_ERR_STATE_MISSING without state.json', async () => {
    const dir = await stateDir();
    await rm(join(dir, StateFiles.state));
    await expectCode(dir, ErrorCode.STATE_MISSING);
  });

  it('is BM_ERR_STATE_CORRUPT, not a silent full or empty result, when the bitmap file is missing', async () => {
    const dir = await stateDir();
    await rm(join(dir, StateFiles.bitmap));
    const err = await recoverError(dir);
    expect(err.code).toBe(ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain(STATE_HINT);
  });

  it('is BM_ERR_STATE_CORRUPT when the log file is missing', async () => {
    const dir = await stateDir();
    await rm(join(dir, StateFiles.log));
    const err = await recoverError(dir);
    expect(err.code).toBe(ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain(STATE_HINT);
  });
});

describe('recoverJobState: running', () => {
  it('is running when the owner is a live process of this host and boot', async () => {
    const child = await liveChild();
    const owner = { ...(await currentOwner()), pid: child.pid! };
    expect((await recoverJobState(await stateDir({ owner }))).running).toBe(true);
  });

  it('is not running when the owner process has exited', async () => {
    const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
    await once(child, 'exit');
    const owner = { ...(await currentOwner()), pid: child.pid! };
    expect((await recoverJobState(await stateDir({ owner }))).running).toBe(false);
  });

  it('is not running when the owner is a live pid of another host', async () => {
    const child = await liveChild();
    const owner = { ...(await currentOwner()), pid: child.pid!, host: 'some-other-host.invalid' };
    expect((await recoverJobState(await stateDir({ owner }))).running).toBe(false);
  });

  it('is not running when the owner is a live pid of another boot', async () => {
    const child = await liveChild();
    const owner = { ...(await currentOwner()), pid: child.pid!, bootId: '00000000-0000-0000-0000-000000000000' };
    expect((await recoverJobState(await stateDir({ owner }))).running).toBe(false);
  });

  it('is not running when the owner is this process (a resume in the same process)', async () => {
    expect((await recoverJobState(await stateDir({ owner: await currentOwner() }))).running).toBe(false);
  });

  it('tells whether a pivoted job is running too', async () => {
    const child = await liveChild();
    const owner = { ...(await currentOwner()), pid: child.pid! };
    expect((await recoverJobState(await stateDir({ phase: 'pivoted', owner }))).running).toBe(true);
  });
});

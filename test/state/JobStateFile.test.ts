import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCode, StateError, type ErrorCodeValue } from '../../src/errors.js';
import {
  JOB_STATE_FORMAT,
  JOB_STATE_VERSION,
  StateFiles,
  currentOwner,
  readJobState,
  writeJobState,
  type JobStateRecord,
} from '../../src/state/JobStateFile.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();

async function validRecord(): Promise<JobStateRecord> {
  return {
    format: JOB_STATE_FORMAT,
    version: JOB_STATE_VERSION,
    id: 'job-1',
    source: '/images/source.raw',
    target: { kind: 'nbd', uri: 'nbd://localhost/disk', role: 'target', writable: true },
    size: 1 << 30,
    granularity: 65536,
    extentSize: 4 << 20,
    phase: 'copying',
    current: 'source',
    consistent: false,
    owner: await currentOwner(),
    updated: new Date(0).toISOString(),
  };
}

/** A state directory whose state.json holds `text`. */
async function dirWith(text: string): Promise<string> {
  const dir = await scratch();
  await writeFile(join(dir, StateFiles.state), text);
  return dir;
}

async function dirWithRecord(change: (r: Record<string, unknown>) => void): Promise<string> {
  const r = { ...(await validRecord()) } as unknown as Record<string, unknown>;
  change(r);
  return dirWith(JSON.stringify(r));
}

async function readError(dir: string): Promise<StateError> {
  const err = await readJobState(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StateError);
  return err as StateError;
}

async function expectCode(dir: string, code: ErrorCodeValue): Promise<StateError> {
  const err = await readError(dir);
  expect(err.code).toBe(code);
  return err;
}

describe('writeJobState and readJobState', () => {
  it('round-trips a record', async () => {
    const dir = await scratch();
    const record = await validRecord();
    await writeJobState(dir, record);
    expect(await readJobState(dir)).toEqual(record);
  });

  it('replaces the record, leaving no temporary file behind', async () => {
    const dir = await scratch();
    const record = await validRecord();
    await writeJobState(dir, record);
    await writeJobState(dir, { ...record, phase: 'ready', consistent: true });
    expect((await readJobState(dir)).phase).toBe('ready');
    expect(await readdir(dir)).toEqual([StateFiles.state]);
  });

  it('writes JSON a person can read', async () => {
    const dir = await scratch();
    await writeJobState(dir, await validRecord());
    const text = await readFile(join(dir, StateFiles.state), 'utf8');
    expect(text).toContain('\n  "phase": "copying"');
    expect(text.endsWith('\n')).toBe(true);
  });

  it('accepts a pivoted record with the target current', async () => {
    const dir = await dirWithRecord((r) => {
      r.phase = 'pivoted';
      r.current = 'target';
      r.consistent = true;
    });
    expect((await readJobState(dir)).current).toBe('target');
  });
});

describe('readJobState: what cannot be used', () => {
  it('is BM_ERR_STATE_MISSING for a directory that does not exist', async () => {
    await expectCode(join(await scratch(), 'nowhere'), ErrorCode.STATE_MISSING);
  });

  it('is BM_ERR_STATE_MISSING for a directory without state.json', async () => {
    await expectCode(await scratch(), ErrorCode.STATE_MISSING);
  });

  it('is BM_ERR_STATE_MISSING for a path that is a file, not a directory', async () => {
    const dir = await dirWith('{}');
    await expectCode(join(dir, StateFiles.state), ErrorCode.STATE_MISSING);
  });

  it('is BM_ERR_STATE_CORRUPT for an empty file', async () => {
    const err = await expectCode(await dirWith(''), ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain('empty');
  });

  it('is BM_ERR_STATE_CORRUPT for JSON cut short', async () => {
    const whole = JSON.stringify(await validRecord(), null, 2);
    const err = await expectCode(await dirWith(whole.slice(0, whole.length / 2)), ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain('not valid JSON');
  });

  it.each(['42', '"text"', 'null', '[]', '[{"format":"blockmirror-job-state"}]'])('is BM_ERR_STATE_CORRUPT for JSON that is not an object: %s', async (text) => {
    const err = await expectCode(await dirWith(text), ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain('not a JSON object');
  });

  it('is BM_ERR_STATE_CORRUPT for another format', async () => {
    const err = await expectCode(await dirWithRecord((r) => (r.format = 'qemu-job-state')), ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain('qemu-job-state');
  });

  it('is BM_ERR_STATE_CORRUPT for a missing format', async () => {
    await expectCode(await dirWithRecord((r) => delete r.format), ErrorCode.STATE_CORRUPT);
  });

  it('is BM_ERR_STATE_VERSION for another version', async () => {
    const err = await expectCode(await dirWithRecord((r) => (r.version = 2)), ErrorCode.STATE_VERSION);
    expect(err.message).toContain('version 2');
  });

  const wrongFields: Array<[field: string, value: unknown]> = [
    ['id', 17],
    ['source', ''],
    ['source', { path: '/x' }],
    ['target', null],
    ['size', 0],
    ['size', 1.5],
    ['size', '1073741824'],
    ['granularity', -65536],
    ['extentSize', 2 ** 53],
    ['phase', 'flying'],
    ['consistent', 'yes'],
    ['owner', { pid: 0, host: 'h', bootId: 'b' }],
    ['owner', { pid: 12, host: 'h' }],
    ['owner', 'me'],
    ['updated', 0],
  ];

  it.each(wrongFields)("is BM_ERR_STATE_CORRUPT naming the field '%s' when it is %j", async (field, value) => {
    const err = await expectCode(await dirWithRecord((r) => (r[field] = value)), ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain(`field '${field}'`);
  });

  it.each(['id', 'source', 'target', 'size', 'granularity', 'extentSize', 'phase', 'consistent', 'owner', 'updated'])(
    "is BM_ERR_STATE_CORRUPT naming the field '%s' when it is missing",
    async (field) => {
      const err = await expectCode(await dirWithRecord((r) => delete r[field]), ErrorCode.STATE_CORRUPT);
      expect(err.message).toContain(`field '${field}'`);
    },
  );

  it("is BM_ERR_STATE_CORRUPT naming 'current' when the source is current after a pivot", async () => {
    const err = await expectCode(
      await dirWithRecord((r) => {
        r.phase = 'pivoted';
        r.current = 'source';
      }),
      ErrorCode.STATE_CORRUPT,
    );
    expect(err.message).toContain("field 'current'");
  });

  it("is BM_ERR_STATE_CORRUPT naming 'current' when the target is current before a pivot", async () => {
    const err = await expectCode(await dirWithRecord((r) => (r.current = 'target')), ErrorCode.STATE_CORRUPT);
    expect(err.message).toContain("field 'current'");
  });

  it('names the file and carries the hint in its message', async () => {
    const dir = await dirWith('');
    const err = await readError(dir);
    expect(err.message).toContain(join(dir, StateFiles.state));
    expect(err.message).toContain(err.hint);
  });
});

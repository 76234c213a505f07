/**
 * Bad input over QMP: each case is answered with an error in QEMU's shape
 * ({"error": {"class", "desc"}}, the request's id echoed where it had one) and the daemon keeps
 * running. One daemon serves every case; after each, it must still answer a command.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { runCli } from '../helpers/cli.js';
import { sparseFile } from '../helpers/files.js';
import { QmpClient } from '../helpers/qmpClient.js';

const MiB = 1 << 20;
let dir: string;
let daemon: RunningDaemon;
let qmp: QmpClient;

beforeAll(async () => {
  dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-qmp-'));
  await sparseFile(join(dir, 'src.img'), 64 * MiB);
  await sparseFile(join(dir, 'dst.img'), 64 * MiB);
  await sparseFile(join(dir, 'small.img'), MiB);
  daemon = await startDaemon([
    '--blockdev', `driver=file,node-name=src,filename=${join(dir, 'src.img')}`,
    '--blockdev', `driver=file,node-name=dst,filename=${join(dir, 'dst.img')}`,
    '--blockdev', `driver=file,node-name=small,filename=${join(dir, 'small.img')}`,
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
    '--export', 'type=nbd,id=e0,node-name=src,writable=on',
    '--qmp', join(dir, 'qmp.sock'),
  ]);
  qmp = await QmpClient.connect(daemon.qmp);
  // A slow job, to try verbs in the wrong state on.
  await qmp.execute('blockdev-mirror', { 'job-id': 'slow', device: 'src', target: 'dst', sync: 'full', speed: 1 });
});

afterAll(async () => {
  qmp?.close();
  daemon?.child.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

/** The daemon still answers, and still has its job. */
async function stillUp(): Promise<void> {
  expect(await qmp.execute('query-version')).toMatchObject({ qemu: { major: 8 } });
  expect(await qmp.execute('query-jobs')).toMatchObject([{ id: 'slow', status: 'running' }]);
}

interface CommandCase {
  readonly what: string;
  readonly execute: string;
  readonly args?: Record<string, unknown>;
  readonly errorClass?: string;
  readonly desc: string | RegExp;
}

const commandCases: CommandCase[] = [
  { what: 'an unknown command', execute: 'no-such-command', errorClass: 'CommandNotFound', desc: 'The command no-such-command has not been found' },
  { what: 'a second qmp_capabilities', execute: 'qmp_capabilities', errorClass: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' },
  { what: 'a missing argument', execute: 'block-job-complete', desc: "Parameter 'device' is missing" },
  { what: 'a mistyped argument', execute: 'block-job-complete', args: { device: 5 }, desc: "Invalid parameter type for 'device', expected: string" },
  { what: 'an unexpected argument', execute: 'query-version', args: { verbose: true }, desc: "Parameter 'verbose' is unexpected" },
  { what: 'a bad enum value', execute: 'blockdev-mirror', args: { 'job-id': 'x', device: 'src', target: 'dst', sync: 'sometimes' }, desc: "Parameter 'sync' does not accept value 'sometimes'" },
  { what: 'a mistyped nested argument', execute: 'blockdev-add', args: { driver: 'file', 'node-name': 'n', filename: 'f', cache: { direct: 'yes' } }, desc: "Invalid parameter type for 'cache.direct', expected: boolean" },
  { what: 'an unknown driver', execute: 'blockdev-add', args: { driver: 'qcow2', 'node-name': 'n' }, desc: "Parameter 'driver' does not accept value 'qcow2'" },
  { what: 'an unknown block job', execute: 'block-job-cancel', args: { device: 'nope' }, errorClass: 'DeviceNotActive', desc: "Block job 'nope' not found" },
  { what: 'an unknown job (job-*)', execute: 'job-dismiss', args: { id: 'nope' }, desc: 'Job not found' },
  { what: 'complete while running', execute: 'block-job-complete', args: { device: 'slow' }, desc: "Job 'slow' in state 'running' cannot accept command verb 'complete'" },
  { what: 'dismiss while running', execute: 'job-dismiss', args: { id: 'slow' }, desc: "Job 'slow' in state 'running' cannot accept command verb 'dismiss'" },
  { what: 'finalize while running', execute: 'job-finalize', args: { id: 'slow' }, desc: "Job 'slow' in state 'running' cannot accept command verb 'finalize'" },
  { what: 'resume of a job not paused', execute: 'block-job-resume', args: { device: 'slow' }, desc: "Can't resume a job that was not paused" },
  { what: 'a negative speed', execute: 'block-job-set-speed', args: { device: 'slow', speed: -1 }, desc: "Parameter 'speed' expects a non-negative value" },
  { what: 'copy mode back to background', execute: 'block-job-change', args: { id: 'slow', type: 'mirror', 'copy-mode': 'write-blocking' }, desc: '' },
  { what: 'a job id already in use', execute: 'blockdev-mirror', args: { 'job-id': 'slow', device: 'small', target: 'dst', sync: 'full' }, desc: "Job ID 'slow' already in use" },
  { what: 'a malformed job id', execute: 'blockdev-mirror', args: { 'job-id': '1x', device: 'src', target: 'dst', sync: 'full' }, desc: "Invalid job ID '1x'" },
  { what: 'a second job on a busy node', execute: 'blockdev-mirror', args: { 'job-id': 'x2', device: 'src', target: 'small', sync: 'full' }, desc: /is busy/ },
  { what: 'mirroring a node into itself', execute: 'blockdev-mirror', args: { 'job-id': 'x3', device: 'small', target: 'small', sync: 'full' }, desc: "Can't mirror node into itself" },
  { what: 'a granularity that is not a power of 2', execute: 'blockdev-mirror', args: { 'job-id': 'x4', device: 'small', target: 'small', sync: 'full', granularity: 1000 }, desc: "Parameter 'granularity' expects a power of 2" },
  { what: "sync 'incremental'", execute: 'blockdev-mirror', args: { 'job-id': 'x5', device: 'small', target: 'dst', sync: 'incremental' }, desc: "Sync mode 'incremental' not supported" },
  { what: 'an unknown node', execute: 'blockdev-mirror', args: { 'job-id': 'x6', device: 'nowhere', target: 'dst', sync: 'full' }, desc: "Cannot find device='nowhere' nor node-name='nowhere'" },
  { what: 'a duplicate node name', execute: 'blockdev-add', args: { driver: 'file', 'node-name': 'src', filename: '/dev/null' }, desc: "Duplicate nodes with node-name='src'" },
  { what: 'a missing image file', execute: 'blockdev-add', args: { driver: 'file', 'node-name': 'gone', filename: '/nonexistent/x.img' }, desc: "Could not open '/nonexistent/x.img': No such file or directory" },
  { what: 'deleting a node an export uses', execute: 'blockdev-del', args: { 'node-name': 'src' }, desc: /is busy|in use/ },
  { what: 'a duplicate export id', execute: 'block-export-add', args: { type: 'nbd', id: 'e0', 'node-name': 'small' }, desc: "Block export id 'e0' is already in use" },
  { what: 'deleting an unknown export', execute: 'block-export-del', args: { id: 'e9' }, desc: "Export 'e9' is not found" },
  { what: 'a second NBD server', execute: 'nbd-server-start', args: { addr: { type: 'unix', data: { path: '/tmp/x.sock' } } }, desc: 'NBD server already running' },
  { what: 'a bitmap granularity below 512', execute: 'block-dirty-bitmap-add', args: { node: 'small', name: 'b', granularity: 256 }, desc: 'Granularity must be power of 2 and at least 512' },
  { what: 'removing an unknown bitmap', execute: 'block-dirty-bitmap-remove', args: { node: 'small', name: 'zz' }, desc: "Dirty bitmap 'zz' not found" },
  { what: 'an unknown transaction action', execute: 'transaction', args: { actions: [{ type: 'drive-backup', data: {} }] }, desc: /does not accept value 'drive-backup'/ },
  { what: 'a transaction with an abort action', execute: 'transaction', args: { actions: [{ type: 'block-dirty-bitmap-add', data: { node: 'small', name: 't' } }, { type: 'abort', data: {} }] }, desc: 'Transaction aborted using Abort action' },
  { what: 'completing a job that is not ready in a transaction', execute: 'transaction', args: { actions: [{ type: 'x-blockmirror-block-job-complete', data: { device: 'slow' } }] }, desc: /cannot accept command verb 'complete'/ },
];

describe('QMP bad input: commands', () => {
  it.each(commandCases.filter((c) => c.desc !== ''))('$what', async (c) => {
    const reply = await qmp.request(c.execute, c.args);
    expect(reply.return).toBeUndefined();
    expect(reply.id).toBeDefined(); // the id is echoed on errors too
    const error = reply.error as { class: string; desc: string };
    expect(error.class).toBe(c.errorClass ?? 'GenericError');
    if (typeof c.desc === 'string') expect(error.desc).toBe(c.desc);
    else expect(error.desc).toMatch(c.desc);
    await stillUp();
  });

  it('copy mode may go to write-blocking, not back', async () => {
    await qmp.execute('block-job-change', { id: 'slow', type: 'mirror', 'copy-mode': 'write-blocking' });
    const reply = await qmp.request('block-job-change', { id: 'slow', type: 'mirror', 'copy-mode': 'background' });
    expect(reply.error).toEqual({ class: 'GenericError', desc: "Change to copy mode 'background' is not implemented" });
    await stillUp();
  });

  it('a transaction that fails changes nothing', async () => {
    await qmp.execute('block-dirty-bitmap-add', { node: 'small', name: 'keep' });
    const reply = await qmp.request('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-remove', data: { node: 'small', name: 'keep' } },
        { type: 'block-dirty-bitmap-add', data: { node: 'small', name: 'new' } },
        { type: 'block-dirty-bitmap-clear', data: { node: 'small', name: 'missing' } },
      ],
    });
    expect(reply.error).toEqual({ class: 'GenericError', desc: "Dirty bitmap 'missing' not found" });
    const nodes = await qmp.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string }> }>>('query-named-block-nodes');
    expect(nodes.find((n) => n['node-name'] === 'small')!['dirty-bitmaps']!.map((b) => b.name)).toEqual(['keep']);
  });
});

interface RawCase {
  readonly what: string;
  readonly send: string;
  readonly desc: string[];
}

const rawCases: RawCase[] = [
  { what: 'malformed JSON', send: '{"execute": }\n', desc: ['JSON parse error'] },
  { what: 'bare words', send: 'not json\n', desc: ["JSON parse error, invalid keyword 'not'", "JSON parse error, invalid keyword 'json'"] },
  { what: 'a JSON array', send: '[1, 2]\n', desc: ['QMP input must be a JSON object'] },
  { what: 'a JSON number', send: '42\n', desc: ['QMP input must be a JSON object'] },
  { what: 'no execute member', send: '{"arguments": {}}\n', desc: ["QMP input lacks member 'execute'"] },
  { what: 'execute not a string', send: '{"execute": 5}\n', desc: ["QMP input member 'execute' must be a string"] },
  { what: 'an unexpected member', send: '{"exec": "query-version"}\n', desc: ["QMP input member 'exec' is unexpected"] },
  { what: 'arguments not an object', send: '{"execute": "query-version", "arguments": [1]}\n', desc: ["QMP input member 'arguments' must be an object"] },
  { what: 'a stray closing brace', send: '}\n', desc: ["JSON parse error, stray '}'"] },
  { what: 'an object larger than 1 MiB', send: `{"execute": "query-version", "id": "${'x'.repeat(1 << 20)}"}\n`, desc: ['JSON parse error, input longer than 1048576 bytes'] },
];

describe('QMP bad input: the stream', () => {
  it.each(rawCases)('$what', async (c) => {
    qmp.sendRaw(c.send);
    for (const desc of c.desc) {
      const reply = await qmp.nextAnonymous();
      expect((reply.error as { desc: string }).desc.startsWith(desc), JSON.stringify(reply).slice(0, 200)).toBe(true);
      expect((reply.error as { class: string }).class).toBe('GenericError');
    }
    await stillUp();
    expect(qmp.anonymous).toEqual([]);
  });

  it('objects split across writes and several on one line are both understood', async () => {
    qmp.sendRaw('{"execute": "query-');
    await new Promise((r) => setTimeout(r, 20));
    qmp.sendRaw('version", "id": "split"}{"execute": "query-jobs", "id": "second"} ');
    await stillUp();
  });

  it('commands before capabilities negotiation are refused; negotiating oob is refused', async () => {
    const fresh = await QmpClient.connect(daemon.qmp, { negotiate: false });
    expect(await fresh.request('query-version')).toMatchObject({ error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
    expect(await fresh.request('qmp_capabilities', { enable: ['oob'] })).toMatchObject({ error: { class: 'GenericError' } });
    expect(await fresh.execute('qmp_capabilities')).toEqual({});
    expect(await fresh.execute('query-version')).toMatchObject({ package: expect.stringContaining('blockmirror') });
    fresh.close();
    await stillUp();
  });

  it('the QMP socket is private to its owner (mode 0600)', async () => {
    const { stat } = await import('node:fs/promises');
    expect((await stat(daemon.qmp)).mode & 0o777).toBe(0o600);
  });
});

describe('daemon start-up options', () => {
  it('refuses a bad --blockdev with exit status 1 and QEMU-style message', async () => {
    const r = await runCli(['daemon', '--blockdev', 'driver=file,node-name=a', '--qmp', join(dir, 'never.sock')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--blockdev driver=file,node-name=a: Parameter 'filename' is missing");
  });

  it('refuses a start without a monitor', async () => {
    const r = await runCli(['daemon', '--blockdev', `driver=file,node-name=a,filename=${join(dir, 'small.img')}`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no QMP monitor');
  });
});

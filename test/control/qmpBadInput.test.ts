/**
 * Bad input and first contact, through a real `blockmirror daemon`: one vertical tab on the QMP
 * socket once put the daemon in an endless loop (100 % CPU, memory growing, no more QMP or NBD,
 * deaf to SIGTERM). Now it answers an error and goes on. Also the daemon's QMP limit options.
 * Every wait here has a bound, so a regression fails instead of hanging.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { sparseFile } from '../helpers/files.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { within } from '../helpers/within.js';

let dir: string;
let daemon: RunningDaemon;
let qmp: QmpClient;

beforeAll(async () => {
  dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-qmpbad-'));
  await sparseFile(join(dir, 'a.img'), 1 << 20);
  daemon = await startDaemon([
    '--blockdev', `driver=file,node-name=a,filename=${join(dir, 'a.img')}`,
    '--nbd-server', `addr.type=unix,addr.path=${join(dir, 'nbd.sock')}`,
    '--qmp', join(dir, 'qmp.sock'),
    '--qmp-max-clients', '4',
    '--qmp-negotiation-timeout', '1',
    '--qmp-max-pending', '8',
    '--qmp-max-unread', '256K',
  ]);
  qmp = await within(5000, 'the first client', QmpClient.connect(daemon.qmp));
});

afterAll(async () => {
  qmp?.close();
  daemon?.child.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});


/** The daemon still answers a well-behaved client, quickly. */
async function stillAnswers(client = qmp): Promise<void> {
  expect(await within(2000, 'query-version', client.execute('query-version'))).toMatchObject({ qemu: { major: 8 } });
}

/**
 * Waits until the daemon greets a new client: a client that just hung up may still count against
 * the monitor's client limit for a moment after its side has closed.
 */
async function untilAccepted(): Promise<void> {
  for (let tries = 0; ; tries++) {
    const first = (await sendAndClose(daemon.qmp, '')).split('\r\n')[0]!;
    if ('QMP' in (JSON.parse(first) as Record<string, unknown>)) return;
    if (tries > 50) throw new Error(`the daemon still refuses new clients: ${first}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Sends raw bytes on a connection of its own and closes it, as `printf '\v' | nc -U SOCKET` does. */
function sendAndClose(path: string, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ path });
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => (got += d));
    s.on('error', reject);
    s.on('connect', () => s.end(bytes));
    s.on('close', () => resolve(got));
  });
}

describe('blockmirror daemon: characters that are not JSON whitespace', () => {
  it("survives the issue's reproduction: a lone vertical tab on a connection of its own", { timeout: 10_000 }, async () => {
    await within(3000, 'the connection that sent \\v to close', sendAndClose(daemon.qmp, '\v'));
    await stillAnswers();
    const fresh = await within(3000, 'a new client', QmpClient.connect(daemon.qmp));
    await stillAnswers(fresh);
    fresh.close();
  });

  it.each([
    ['a vertical tab', '\v'],
    ['a form feed', '\f'],
    ['a no-break space', '\u00a0'],
    ['a line separator', '\u2028'],
  ])('answers %s with an error, then the next command', { timeout: 10_000 }, async (_what, c) => {
    qmp.sendRaw(c);
    const reply = await qmp.nextAnonymous(3000);
    expect(reply).toEqual({ error: { class: 'GenericError', desc: `JSON parse error, stray '\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}'` } });
    await stillAnswers();
    expect(qmp.anonymous).toEqual([]);
  });

  it('serves NBD and block jobs queries after bad input', { timeout: 10_000 }, async () => {
    qmp.sendRaw(`\v\f{"execute": "query-block-jobs", "id": "raw"}\u00a0`);
    await qmp.nextAnonymous(3000);
    await qmp.nextAnonymous(3000);
    expect(await within(2000, 'query-block-jobs', qmp.execute('query-block-jobs'))).toEqual([]);
    expect(await within(2000, 'query-named-block-nodes', qmp.execute('query-named-block-nodes'))).toHaveLength(1);
  });
});

describe('blockmirror daemon: QMP limit options', () => {
  it('--qmp-max-clients: one client too many is told why and closed', { timeout: 10_000 }, async () => {
    const others = await Promise.all([1, 2, 3].map(() => within(3000, 'a client', QmpClient.connect(daemon.qmp))));
    const refused = await within(3000, 'the refused client to be closed', sendAndClose(daemon.qmp, ''));
    expect(JSON.parse(refused)).toEqual({ error: { class: 'GenericError', desc: 'Too many QMP clients: this monitor serves at most 4 at once' } });
    await Promise.all(others.map((o) => o.close()));
    await untilAccepted();
    await stillAnswers();
  });

  it('--qmp-negotiation-timeout: a client that never negotiates is told why and closed', { timeout: 10_000 }, async () => {
    const started = Date.now();
    const got = await within(5000, 'the idle client to be closed', new Promise<string>((resolve) => {
      const s = connect({ path: daemon.qmp });
      let text = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => (text += d));
      s.on('close', () => resolve(text));
    }));
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    const [greeting, error] = got.trim().split('\r\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(greeting).toHaveProperty('QMP');
    expect(error).toEqual({ error: { class: 'GenericError', desc: 'No capabilities negotiation within 1 s: closing the connection' } });
    await stillAnswers(); // a negotiated client is not timed out
  });

  it('refuses a limit of 0 as a usage error', { timeout: 10_000 }, async () => {
    const r = await runCli(['daemon', '--qmp', join(dir, 'never.sock'), '--qmp-max-clients', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--qmp-max-clients must be a whole number from 1 to 65536');
  });

  it('still stops on SIGTERM after all that', { timeout: 15_000 }, async () => {
    qmp.sendRaw('\v\f\u00a0\u2028');
    await qmp.nextAnonymous(3000);
    daemon.child.kill('SIGTERM');
    expect(await within(10_000, 'the daemon to exit on SIGTERM', daemon.exited)).toBe(0);
  });
});

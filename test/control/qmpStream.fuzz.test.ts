/**
 * Random bytes on the QMP socket of one real `blockmirror daemon`, a fresh connection per case:
 * arbitrary bytes, valid commands mutated, and floods of a short pattern. After each case a
 * well-behaved client still negotiates and gets query-version and query-block-jobs answered
 * within a bound, the daemon's resident memory stays below a bound, and every line the daemon
 * sent on the fuzzed connection is a JSON object of QMP's shapes (greeting, return, error, event).
 */
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { sparseFile } from '../helpers/files.js';
import { fuzzParams, peerBytes } from '../helpers/fuzz.js';
import { QmpClient } from '../helpers/qmpClient.js';
import { residentBytes, within } from '../helpers/within.js';

const MiB = 1 << 20;
let dir: string;
let daemon: RunningDaemon;
/** Resident memory the daemon may reach: what it had when it started, plus this. */
const RSS_HEADROOM = 160 * MiB;
let rssBound: number;

beforeAll(async () => {
  dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-qmpfz-'));
  await sparseFile(join(dir, 'a.img'), 4 * MiB);
  await sparseFile(join(dir, 'b.img'), 4 * MiB);
  daemon = await startDaemon([
    '--blockdev', `driver=file,node-name=a,filename=${join(dir, 'a.img')}`,
    '--blockdev', `driver=file,node-name=b,filename=${join(dir, 'b.img')}`,
    '--bitmap-dir', dir,
    '--qmp', join(dir, 'qmp.sock'),
  ]);
  await wellBehaved();
  rssBound = (await residentBytes(daemon.child.pid!)) + RSS_HEADROOM;
});

afterAll(async () => {
  daemon?.child.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});



/** A new client negotiates and gets its queries answered. */
async function wellBehaved(): Promise<void> {
  const client = await within(5000, 'a new client to negotiate', QmpClient.connect(daemon.qmp));
  try {
    expect(await within(5000, 'query-version', client.execute('query-version'))).toMatchObject({ qemu: { major: 8 } });
    expect(await within(5000, 'query-block-jobs', client.execute('query-block-jobs'))).toEqual([]);
  } finally {
    client.close();
  }
}

/**
 * Sends `bytes` on a connection of its own, collects what comes back until the daemon has been
 * quiet a moment, and closes. Returns the lines received.
 */
async function fuzzConnection(bytes: Uint8Array, quietMs = 15): Promise<string[]> {
  const socket = connect({ path: daemon.qmp });
  socket.on('error', () => {});
  let text = '';
  let last = Date.now();
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    text += d;
    last = Date.now();
  });
  await within(5000, 'the greeting', new Promise<void>((resolve) => socket.once('data', () => resolve())));
  socket.write(bytes);
  const started = Date.now();
  while (Date.now() - last < quietMs && Date.now() - started < 2000) await new Promise((r) => setTimeout(r, 5));
  socket.destroy();
  expect(text.endsWith('\r\n'), 'a reply cut short').toBe(true);
  return text.split('\r\n').slice(0, -1);
}

const ERROR_CLASSES = ['GenericError', 'CommandNotFound', 'DeviceNotActive', 'DeviceNotFound', 'KVMMissingCap'];

/** Each line is one JSON object: the greeting first, then returns, errors and events. */
function assertQmpShapes(lines: readonly string[]): void {
  expect(lines.length).toBeGreaterThanOrEqual(1);
  lines.forEach((line, i) => {
    const m = JSON.parse(line) as Record<string, unknown>;
    if (i === 0) {
      expect(m).toHaveProperty('QMP');
      return;
    }
    if ('return' in m) return;
    if ('event' in m) {
      expect(m).toHaveProperty('timestamp');
      return;
    }
    const error = m.error as { class: unknown; desc: unknown };
    expect(ERROR_CLASSES).toContain(error.class);
    expect(typeof error.desc).toBe('string');
    expect(error.desc).not.toMatch(/Cannot read propert|is not a function|is not iterable|Maximum call stack|undefined/);
  });
}

async function afterCase(): Promise<void> {
  await wellBehaved();
  expect(await residentBytes(daemon.child.pid!)).toBeLessThan(rssBound);
  expect(daemon.child.exitCode).toBeNull();
}

const encoder = new TextEncoder();
/** Harmless commands (queries, negotiation) as a client would send them, to start from. */
const VALID = [
  '{"execute": "qmp_capabilities"}',
  '{"execute": "query-version", "id": 1}',
  '{"execute": "query-block-jobs"}',
  '{"execute": "query-named-block-nodes", "arguments": {"flat": true}, "id": "n"}',
  '{"execute": "query-commands"}\r\n{"execute": "query-jobs"}',
].map((t) => encoder.encode(t));

/** A valid command with some of its bytes flipped, inserted, deleted, or the whole repeated or cut. */
const mutatedCommand: fc.Arbitrary<Uint8Array> = fc
  .tuple(
    fc.constantFrom(...VALID),
    fc.array(
      fc.oneof(
        fc.tuple(fc.constant('flip' as const), fc.nat(), fc.integer({ min: 0, max: 255 })),
        fc.tuple(fc.constant('insert' as const), fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 })),
        fc.tuple(fc.constant('delete' as const), fc.nat(), fc.integer({ min: 1, max: 8 })),
        fc.tuple(fc.constant('repeat' as const), fc.integer({ min: 2, max: 20 })),
        fc.tuple(fc.constant('cut' as const), fc.nat()),
      ),
      { minLength: 1, maxLength: 5 },
    ),
  )
  .map(([base, edits]) => {
    let b = [...base];
    for (const e of edits) {
      const at = (n: number): number => n % (b.length + 1);
      if (e[0] === 'flip' && b.length) b[e[1] % b.length] = e[2];
      else if (e[0] === 'insert') b.splice(at(e[1]), 0, ...e[2]);
      else if (e[0] === 'delete') b.splice(at(e[1]), e[2]);
      else if (e[0] === 'repeat') b = Array.from({ length: e[1] }, () => b).flat();
      else if (e[0] === 'cut') b = b.slice(0, at(e[1]));
    }
    return Uint8Array.from(b);
  });

describe('QMP stream fuzz, through a real daemon', () => {
  it('random bytes: answered in QMP shapes; the daemon goes on serving, within its memory bound', { timeout: 120_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(peerBytes(512, VALID), async (bytes) => {
        assertQmpShapes(await fuzzConnection(bytes));
        await afterCase();
      }),
      fuzzParams(1),
    );
  });

  it('mutated commands: answered in QMP shapes; the daemon goes on serving', { timeout: 120_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(mutatedCommand, async (bytes) => {
        assertQmpShapes(await fuzzConnection(bytes));
        await afterCase();
      }),
      fuzzParams(1),
    );
  });

  it('floods of a short pattern (up to 4 MiB) neither hang the daemon nor grow it', { timeout: 120_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(peerBytes(16), fc.constantFrom(...VALID)).filter((p) => p.length > 0), fc.integer({ min: 64 << 10, max: 4 * MiB }), async (pattern, size) => {
        const flood = new Uint8Array(size);
        for (let i = 0; i < size; i += pattern.length) flood.set(pattern.subarray(0, Math.min(pattern.length, size - i)), i);
        await fuzzConnection(flood, 50);
        await afterCase();
      }),
      fuzzParams(0.1),
    );
  });
});

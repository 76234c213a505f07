/**
 * Shared pieces of the NBD fuzz tests: a heap watch, time bounds, a raw byte exchange with a
 * server, and the checks every case ends with (the server still serves a well-behaved client,
 * every error it reported has a stable code).
 */
import { connect } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect } from 'vitest';
import { BlockmirrorError, ErrorCode } from '../../src/errors.js';
import { NbdDevice } from '../../src/io/nbd/NbdDevice.js';
import type { NbdServer } from '../../src/io/nbd/NbdServer.js';
import { has, run } from '../helpers/peers.js';
import { within } from '../helpers/within.js';

export { within };

setFlagsFromString('--expose-gc');
/** A full collection, so heap samples measure what is held rather than what is not yet collected. */
const collect = runInNewContext('gc') as () => void;

/**
 * Vitest's time for one fuzz property: fuzzParams stops generating cases after 60 s, and a
 * failure then shrinks, so a long run (BLOCKMIRROR_FUZZ_RUNS=5000) needs more than the default.
 */
export const FUZZ_TEST_TIMEOUT_MS = 300_000;

/** Bytes of JS heap plus Buffer memory in use now, after a collection. */
export function heldBytes(): number {
  collect();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Watches memory across a property run: `check()` fails once growth from the start passes `boundBytes`. */
export class HeapWatch {
  readonly #start = heldBytes();
  readonly #bound: number;
  #peak = 0;
  #cases = 0;

  constructor(boundBytes: number) {
    this.#bound = boundBytes;
  }

  /** Samples every few cases (a collection costs a few milliseconds). */
  check(every = 10): void {
    if (this.#cases++ % every !== 0) return;
    const growth = heldBytes() - this.#start;
    this.#peak = Math.max(this.#peak, growth);
    expect(growth, `memory grew by ${growth} bytes`).toBeLessThan(this.#bound);
  }

  get peakGrowth(): number {
    return this.#peak;
  }
}


/** How a raw exchange ended. */
export interface ExchangeResult {
  /** The server closed the connection (as opposed to us destroying it). */
  readonly closedByServer: boolean;
  /** Bytes the server sent. */
  readonly received: number;
}

/**
 * Connects, sends `bytes` (in `pieces` writes), then half-closes (`end`) or drops the connection
 * (`destroy`), reading whatever the server answers. With `end`, resolves once the server has
 * closed; a server that does not within `closeWithinMs` fails the exchange.
 */
export function exchange(
  path: string,
  bytes: Uint8Array,
  options: { ending: 'end' | 'destroy'; pieces?: number; closeWithinMs?: number } = { ending: 'end' },
): Promise<ExchangeResult> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    let received = 0;
    let timer: NodeJS.Timeout | undefined;
    socket.on('data', (d: Buffer) => (received += d.length));
    socket.on('error', () => {}); // EPIPE/ECONNRESET once the server hung up: expected
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ closedByServer: options.ending === 'end', received });
    });
    socket.once('connect', () => {
      const pieces = Math.max(1, options.pieces ?? 1);
      const step = Math.ceil(bytes.length / pieces) || 1;
      for (let at = 0; at < bytes.length; at += step) socket.write(bytes.subarray(at, at + step));
      if (options.ending === 'destroy') {
        socket.destroy();
        return;
      }
      socket.end();
      timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`the server did not close the connection within ${options.closeWithinMs ?? 3000} ms (received ${received} bytes)`));
      }, options.closeWithinMs ?? 3000);
    });
  });
}

/** Waits until the server has no clients left (every session ended), failing after `ms`. */
export async function sessionsEnd(server: NbdServer, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (server.clients > 0) {
    if (Date.now() > deadline) throw new Error(`${server.clients} session(s) still open ${ms} ms after their clients left`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const SERVER_SIDE_CODES: readonly string[] = [ErrorCode.NBD_PROTOCOL, ErrorCode.NBD_CONNECTION];

/** Every error a server reported through `onClientError` is typed, with a stable NBD code. */
export function expectTypedClientErrors(errors: readonly Error[]): void {
  for (const err of errors) {
    expect(err, `onClientError got ${err.name}: ${err.message}`).toBeInstanceOf(BlockmirrorError);
    expect(SERVER_SIDE_CODES, `onClientError got code ${(err as BlockmirrorError).code}: ${err.message}`).toContain((err as BlockmirrorError).code);
  }
}

/**
 * A well-behaved client (our own NbdDevice) still connects, writes and reads back. Returns what
 * it wrote, so a caller keeping a shadow of the device can apply it.
 */
export async function stillServes(uri: string, size: number, seed: number): Promise<{ offset: number; data: Buffer }> {
  const dev = await within(5000, 'a well-behaved client', NbdDevice.open({ kind: 'nbd', uri, writable: true }, { connections: 1, handshakeTimeoutMs: 3000 }));
  try {
    const data = Buffer.alloc(512, seed & 0xff);
    data.writeUInt32BE(seed >>> 0, 0);
    const offset = (seed * 4096) % (size - data.length);
    await dev.write(data, offset);
    const back = Buffer.alloc(data.length);
    await dev.read(back, offset);
    expect(back.equals(data)).toBe(true);
    return { offset, data };
  } finally {
    await dev.close();
  }
}

/** True when nbdinfo is installed (callers skip its check, saying so, when it is not). */
export const haveNbdinfo = has('nbdinfo');

/** The real nbdinfo reads the export's size. */
export async function nbdinfoSees(uri: string, size: number): Promise<void> {
  const r = await run('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
  expect(r.code, r.stderr).toBe(0);
  expect(Number(r.stdout.trim())).toBe(size);
}

/**
 * Real NBD peers for interop tests: qemu-nbd, nbdkit, nbdinfo, nbdcopy, qemu-img, qemu-io, fio.
 * A test that needs one skips, saying which, where it is not installed (.ci/run installs them).
 * Every server started here is killed after each test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { afterEach } from 'vitest';

const found = new Map<string, boolean>();

/** True when `bin` is on the PATH. */
export function has(bin: string): boolean {
  let yes = found.get(bin);
  if (yes === undefined) {
    yes = (process.env.PATH ?? '').split(delimiter).some((dir) => {
      try {
        accessSync(join(dir, bin), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
    found.set(bin, yes);
  }
  return yes;
}

/**
 * The binaries of `bins` that are missing, announced once on the console so a skipped test says
 * why; empty when all are there. Use as `it.skipIf(missing('qemu-nbd').length > 0)`.
 */
export function missing(...bins: string[]): string[] {
  const gone = bins.filter((b) => !has(b));
  if (gone.length > 0 && !announced.has(gone.join(' '))) {
    announced.add(gone.join(' '));
    console.warn(`[nbd tests] skipping tests that need ${gone.join(', ')}: not installed (apt-get install qemu-utils qemu-system-common nbdkit libnbd-bin fio)`);
  }
  return gone;
}
const announced = new Set<string>();

/** Output of a finished command. */
export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion (never throws on a non-zero exit: the caller checks `code`). */
export function run(cmd: string, args: readonly string[], options: { timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs a command and fails with its stderr unless it exits 0; resolves with stdout. */
export async function runOk(cmd: string, args: readonly string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A server process started for a test: killed in afterEach. */
export interface Peer {
  readonly pid: number;
  kill(signal?: NodeJS.Signals): void;
}

/** Starts and tracks test servers; everything it started is killed after each test. */
export function usePeers(): {
  /** qemu-nbd on a Unix socket, daemonised: resolves once it accepts connections. */
  qemuNbd(args: readonly string[]): Promise<Peer>;
  /** nbdkit on a Unix socket (it backgrounds itself once ready). */
  nbdkit(args: readonly string[]): Promise<Peer>;
  /** A long-running command whose first stdout line matching `ready` says it is up. */
  spawnUntil(cmd: string, args: readonly string[], ready: RegExp): Promise<{ peer: Peer; line: string; child: ChildProcess }>;
} {
  const started: Peer[] = [];
  afterEach(() => {
    for (const p of started.splice(0)) p.kill('SIGKILL');
  });
  const track = (pid: number): Peer => {
    const peer: Peer = {
      pid,
      kill(signal: NodeJS.Signals = 'SIGTERM') {
        try {
          process.kill(pid, signal);
        } catch {
          // already gone
        }
      },
    };
    started.push(peer);
    return peer;
  };
  // Both daemonise once listening, so "the parent exited 0" means "ready", with no probe connection
  // (a probe would use up a qemu-nbd that serves a single client).
  const daemon = async (cmd: string, args: readonly string[], pidFile: string): Promise<Peer> => {
    await rm(pidFile, { force: true }); // a dead server's pid file would be mistaken for the new one's
    const r = await run(cmd, args);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    // The daemon writes its pid file once it is ready, which may be just after the parent exits.
    for (let waited = 0; ; waited += 10) {
      const pid = await readFile(pidFile, 'utf8').then((t) => Number(t.trim()), () => 0);
      if (pid > 0) return track(pid);
      if (waited > 5000) throw new Error(`${cmd} wrote no pid file ${pidFile}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  return {
    qemuNbd: (args) => {
      const pidFile = `${args.find((a) => a.startsWith('--socket=') || a.startsWith('-k'))!.replace(/^(--socket=|-k)/, '')}.pid`;
      return daemon('qemu-nbd', ['--fork', `--pid-file=${pidFile}`, ...args], pidFile);
    },
    nbdkit: (args) => {
      const socketAt = args.indexOf('-U');
      const pidFile = `${args[socketAt + 1]}.pid`;
      return daemon('nbdkit', ['-P', pidFile, ...args], pidFile);
    },
    spawnUntil: (cmd, args, ready) =>
      new Promise((resolve, reject) => {
        const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        const peer = track(child.pid!);
        let out = '';
        let err = '';
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const line = out.split('\n').find((l) => ready.test(l));
          if (line) resolve({ peer, line, child });
        });
        child.on('exit', (code) => reject(new Error(`${cmd} exited ${code} before it was ready: ${err}${out}`)));
      }),
  };
}

/** `qemu-img compare` of two raw images (paths or NBD URIs): true when identical. */
export async function imagesIdentical(a: string, b: string): Promise<boolean> {
  const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b]);
  if (r.code !== 0 && r.code !== 1) throw new Error(`qemu-img compare ${a} ${b} failed: ${r.stderr}`);
  return r.code === 0;
}

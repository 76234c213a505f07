import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, expect } from 'vitest';
import { has } from './peers.js';

/** The built command line (`npm test` builds first). */
export const CLI = resolve(import.meta.dirname, '../../dist/cli/bin.js');

export interface CliRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

const isRoot = process.getuid?.() === 0;

/**
 * Why file permissions cannot be enforced on a command run here, or undefined when they can.
 * Root reads any file, so as root the command runs with the capabilities that let it do so
 * dropped (setpriv, from util-linux): it stays root, so it can still load the CLI from a
 * checkout that other users cannot enter (a clone under /root, say).
 */
export function permissionsUnenforceable(): string | undefined {
  if (!isRoot) return undefined;
  if (!has('setpriv')) return 'running as root without setpriv (util-linux), so file permissions cannot be enforced';
  dropWorks ??= spawnSync('setpriv', [...DROP_DAC, 'true']).status === 0;
  return dropWorks ? undefined : 'running as root where setpriv may not drop capabilities (no CAP_SETPCAP), so file permissions cannot be enforced';
}

/** setpriv arguments that take away root's power to read and write any file (from the inheritable set too, which some container runtimes fill). */
const DROP_DAC = ['--inh-caps', '-dac_override,-dac_read_search', '--bounding-set', '-dac_override,-dac_read_search', '--'];
let dropWorks: boolean | undefined;

/** Options of {@link runCli}. */
export interface RunCliOptions extends SpawnOptions {
  /** Sees output as it arrives (to send a signal at the right moment, say). */
  onStdout?: (chunk: string, child: ReturnType<typeof spawn>) => void;
  /** Run where file permission bits apply, even as root (see {@link permissionsUnenforceable}). */
  enforcePermissions?: boolean;
}

/** Runs `blockmirror ARGS...` to completion. */
export function runCli(args: readonly string[], options: RunCliOptions = {}): Promise<CliRun> {
  const [cmd, argv] =
    options.enforcePermissions && isRoot
      ? ['setpriv', [...DROP_DAC, process.execPath, CLI, ...args]]
      : [process.execPath, [CLI, ...args]];
  return new Promise((done, fail) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      options.onStdout?.(d.toString(), child);
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('close', (code, signal) => done({ code, signal, stdout, stderr }));
  });
}

/** Parses NDJSON output into events. */
export function events(stdout: string): Array<Record<string, unknown> & { event: string }> {
  return stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Record<string, unknown> & { event: string });
}

/** A command line still running: its events so far, and ways to wait for more. */
export interface LiveCli {
  readonly child: ChildProcess;
  /** NDJSON events printed so far (with --json). */
  readonly events: CliEvent[];
  /** Resolves with the first event named `name` (at once if already printed); rejects if the command exits first. */
  waitFor(name: string, timeoutMs?: number): Promise<CliEvent>;
  /** Resolves with the first whole line of stdout (or stderr) matching `pattern`. */
  waitForLine(pattern: RegExp, options?: { stream?: 'stdout' | 'stderr'; timeoutMs?: number }): Promise<string>;
  signal(signal: NodeJS.Signals): void;
  /** Settles once the command has exited. */
  readonly done: Promise<CliRun>;
}

export type CliEvent = Record<string, unknown> & { event: string };

/**
 * Starts `blockmirror ARGS...` and leaves it running; every command started through the returned
 * function that is still running after a test is killed.
 */
export function useLiveCli(): (args: readonly string[]) => LiveCli {
  const started: ChildProcess[] = [];
  afterEach(() => {
    for (const child of started.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return (args) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(child);
    const events: CliEvent[] = [];
    let stdout = '';
    let stderr = '';
    let parsedUpTo = 0;
    const waiters = new Set<() => void>();
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      const end = stdout.lastIndexOf('\n') + 1;
      for (const line of stdout.slice(parsedUpTo, end).split('\n')) {
        if (line.startsWith('{')) events.push(JSON.parse(line) as CliEvent);
      }
      parsedUpTo = end;
      for (const w of waiters) w();
    });
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      for (const w of waiters) w();
    });
    const done = new Promise<CliRun>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => {
        resolve({ code, signal, stdout, stderr });
        for (const w of waiters) w();
      });
    });
    const waitUntil = <T>(what: string, found: () => T | undefined, timeoutMs: number): Promise<T> =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`timed out waiting for ${what}; stderr: ${stderr}`)), timeoutMs);
        const check = (): void => {
          const value = found();
          if (value !== undefined) finish(undefined, value);
          else if (child.exitCode !== null || child.signalCode !== null) finish(new Error(`the command exited (${child.exitCode ?? child.signalCode}) before ${what}; stderr: ${stderr}`));
        };
        const finish = (err: Error | undefined, value?: T): void => {
          clearTimeout(timer);
          waiters.delete(check);
          if (err) reject(err);
          else resolve(value!);
        };
        waiters.add(check);
        check();
      });
    return {
      child,
      events,
      done,
      waitFor: (name, timeoutMs = 20_000) => waitUntil(`a '${name}' event`, () => events.find((e) => e.event === name), timeoutMs),
      waitForLine: (pattern, { stream = 'stdout', timeoutMs = 20_000 } = {}) => {
        const lines = (): string[] => (stream === 'stdout' ? stdout : stderr).split('\n').slice(0, -1);
        return waitUntil(`a line matching ${pattern} on ${stream}`, () => lines().find((l) => pattern.test(l)), timeoutMs);
      },
      signal: (signal) => child.kill(signal),
    };
  };
}

/** Event names in order, without the `progress` events between them. */
export function milestones(evs: ReadonlyArray<{ event: string }>): string[] {
  return evs.map((e) => e.event).filter((e) => e !== 'progress');
}

/**
 * Sends `signal` (if any), waits for the command to exit, and checks its exit status and the
 * events it printed (as {@link milestones}). Resolves with the run.
 */
export async function expectExit(cli: LiveCli, signal: NodeJS.Signals | undefined, code: number, expected: readonly string[]): Promise<CliRun> {
  if (signal) cli.signal(signal);
  const run = await cli.done;
  expect(run.code, run.stderr).toBe(code);
  expect(milestones(cli.events)).toEqual(expected);
  return run;
}

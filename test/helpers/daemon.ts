/**
 * Starts `blockmirror daemon` (the built CLI) or qemu-storage-daemon with the same options, and
 * waits until its QMP socket accepts connections. Every daemon started here is killed after each test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach } from 'vitest';
import { someoneListens } from '../../src/util/unixSocket.js';
import { CLI } from './cli.js';

export interface RunningDaemon {
  readonly child: ChildProcess;
  readonly qmp: string;
  /** stderr so far. */
  stderr(): string;
  /** Resolves with the exit code once the process has exited. */
  readonly exited: Promise<number | null>;
}

export type DaemonBinary = 'blockmirror' | 'qemu-storage-daemon';

/** Starts a daemon and waits for its QMP socket (`qmp`, default: the value of --qmp). The caller kills it. */
export async function startDaemon(args: readonly string[], options?: { qmp: string; binary?: DaemonBinary }): Promise<RunningDaemon> {
  const qmp = options?.qmp ?? args[args.indexOf('--qmp') + 1]!;
  const [cmd, argv] = options?.binary === 'qemu-storage-daemon' ? ['qemu-storage-daemon', [...args]] : [process.execPath, [CLI, 'daemon', ...args]];
  const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  for (let waited = 0; ; waited += 20) {
    if (gone) throw new Error(`daemon exited before it listened: ${err}`);
    if (await someoneListens(qmp)) break;
    if (waited > 15_000) {
      child.kill('SIGKILL');
      throw new Error(`daemon did not listen on ${qmp}: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, qmp, stderr: () => err, exited };
}

/** {@link startDaemon}, with every daemon it started killed after each test. */
export function useDaemons(): (args: readonly string[], options?: { qmp: string; binary?: DaemonBinary }) => Promise<RunningDaemon> {
  const started: ChildProcess[] = [];
  afterEach(() => {
    for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });
  return async (args, options) => {
    const d = await startDaemon(args, options);
    started.push(d.child);
    return d;
  };
}

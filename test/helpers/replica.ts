import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

const CLI = resolve(import.meta.dirname, '../../dist/cli/bin.js');

/** A running `blockmirror replica` process and the URI its export serves. */
export interface ReplicaProcess {
  readonly child: ChildProcess;
  readonly uri: string;
}

/**
 * Starts `blockmirror replica DISK` (built CLI) on loopback TCP, port `port` (0: a free one), and
 * resolves once its export and control socket are ready; rejects if it exits first, with its
 * stderr. `extra`: more options (`--granularity`, `--durability`).
 */
export async function startReplicaProcess(
  disk: string,
  control: string,
  state: string,
  options: { port?: string | number; extra?: readonly string[] } = {},
): Promise<ReplicaProcess> {
  const args = [CLI, 'replica', disk, '--export', `nbd://127.0.0.1:${options.port ?? 0}/disk`, '--control', control, '--state', state, '--json', ...(options.extra ?? [])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const uri = await new Promise<string>((done, fail) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"event":"listening".*?"uri":"([^"]+)"/.exec(out);
      if (m) done(m[1]!);
    });
    child.on('close', (code) => fail(new Error(`replica exited (${code}): ${stderr}`)));
  });
  return { child, uri };
}

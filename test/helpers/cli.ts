import { spawn, type SpawnOptions } from 'node:child_process';
import { resolve } from 'node:path';

/** The built command line (`npm test` builds first). */
export const CLI = resolve(import.meta.dirname, '../../dist/cli/bin.js');

export interface CliRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `blockmirror ARGS...` to completion. `onStdout` sees output as it arrives (to send a
 * signal at the right moment, say).
 */
export function runCli(
  args: readonly string[],
  options: SpawnOptions & { onStdout?: (chunk: string, child: ReturnType<typeof spawn>) => void } = {},
): Promise<CliRun> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
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

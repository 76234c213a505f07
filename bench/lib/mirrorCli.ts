import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

/** The built command line. */
const CLI = resolve(import.meta.dirname, '../../dist/cli/bin.js');

/** A `blockmirror ... --json` process, read event by event. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly #events: Array<Record<string, unknown>> = [];
  readonly #waiters: Array<{ name: string; resolve: (e: Record<string, unknown>) => void }> = [];
  #stderr = '';

  constructor(args: readonly string[]) {
    this.child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let pending = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      pending += d.toString();
      for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        const e = JSON.parse(line) as Record<string, unknown>;
        this.#events.push(e);
        for (const w of this.#waiters.filter((x) => x.name === e.event)) w.resolve(e);
      }
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.#stderr += d.toString()));
    this.exited = new Promise((done) => this.child.on('close', (code) => done(code)));
  }

  /** The first event of that name (at once if it came already); rejects if the process exits first. */
  event(name: string): Promise<Record<string, unknown>> {
    const seen = this.#events.find((e) => e.event === name);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolveEvent, reject) => {
      this.#waiters.push({ name, resolve: resolveEvent });
      void this.exited.then((code) => reject(new Error(`blockmirror exited (${code}) before '${name}': ${this.#stderr.trim()}`)));
    });
  }
}

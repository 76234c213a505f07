import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { seededRandom } from '../fixtures/prng.mjs';
import { ShadowWriter } from './ShadowWriter.js';

/** The built command line. */
const CLI = resolve(import.meta.dirname, '../../dist/cli/bin.js');

/**
 * Where a kill is aimed. The job may have moved on by the time it lands: `status` says where it
 * was. `first-pass`: with no writer yet, so a new job is still in its first pass (the bulk copy's
 * engine) when killed.
 */
export type KillAim = 'first-pass' | 'copying' | 'ready' | 'completing';
const AIMS: readonly KillAim[] = ['first-pass', 'copying', 'ready', 'completing'];

/** Options of {@link runKills}. */
export interface KillRunOptions {
  /** A scratch directory (emptied per episode). */
  readonly dir: string;
  /** Kills in all. */
  readonly kills: number;
  /** Kills per image, before the episode's job is completed and checked. */
  readonly killsPerEpisode?: number;
  readonly imageBytes?: number;
  readonly seed?: number;
  /** Where kills may be aimed (default: anywhere). */
  readonly aims?: readonly KillAim[];
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

/** One kill and what followed. */
export interface KillRecord {
  readonly episode: number;
  readonly aim: KillAim;
  /** The phase `status` found after the kill. */
  readonly phase: string;
  /** What `status` said a resume had left to copy, and what the resume copied until ready (undefined: pivoted, no resume). */
  readonly leftBytes: number;
  readonly resumeCopied: number | undefined;
}

/** What {@link runKills} found. */
export interface KillRunResult {
  readonly kills: KillRecord[];
  /** Episodes checked, and blocks of the current image that did not match the shadow of acknowledged writes. */
  readonly episodes: number;
  readonly mismatchedBlocks: number;
  /** Problems other than mismatches (a resume that copied more than it was told, an error), for the report. */
  readonly problems: string[];
  readonly imageBytes: number;
}

/** A `blockmirror mirror --json` process, its events as they come. */
class MirrorProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly #events: Array<Record<string, unknown>> = [];
  readonly #waiters: Array<{ event: string; where: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }> = [];
  stderr = '';

  constructor(args: readonly string[]) {
    this.child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let pending = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      pending += d.toString();
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        const e = JSON.parse(line) as Record<string, unknown>;
        this.#events.push(e);
        for (const w of this.#waiters.filter((x) => x.event === e.event && x.where(e))) w.resolve(e);
      }
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((done) => this.child.on('close', (code) => done(code)));
  }

  /** The first event of that name (and matching `where`), at once if it came already; rejects if the process exits first. */
  event(name: string, where: (e: Record<string, unknown>) => boolean = () => true): Promise<Record<string, unknown>> {
    const seen = this.#events.find((e) => e.event === name && where(e));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolveEvent, reject) => {
      this.#waiters.push({ event: name, where, resolve: resolveEvent });
      void this.exited.then((code) => reject(new Error(`mirror exited (${code}) before '${name}': ${this.stderr.trim()}`)));
    });
  }

  has(name: string): boolean {
    return this.#events.some((e) => e.event === name);
  }
}

/** The writer's working set: a sixteenth of the image, so that a resume has far less than the image to copy. */
const WORKING_SET = 1 / 16;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function status(dir: string): Record<string, unknown> {
  const run = spawnSync(process.execPath, [CLI, 'status', dir, '--json'], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`status failed (${run.status}): ${run.stderr}`);
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

/**
 * Kills `blockmirror mirror --state` with SIGKILL at random moments while a writer with a shadow
 * writes through its export, resumes it each time, and checks at the end of every episode that
 * the current image holds every acknowledged write, and that each resume copied no more than
 * `status` said was left.
 */
export async function runKills(o: KillRunOptions): Promise<KillRunResult> {
  const random = seededRandom(o.seed ?? 1);
  const imageBytes = o.imageBytes ?? 128 << 20;
  const perEpisode = o.killsPerEpisode ?? 5;
  const kills: KillRecord[] = [];
  const problems: string[] = [];
  let mismatchedBlocks = 0;
  let episodes = 0;
  while (kills.length < o.kills) {
    const episode = episodes++;
    await rm(join(o.dir, 'state'), { recursive: true, force: true });
    const src = join(o.dir, 'src.img');
    const dst = join(o.dir, 'dst.img');
    const stateDir = join(o.dir, 'state');
    await rm(dst, { force: true });
    const initial = randomFillSync(Buffer.alloc(imageBytes));
    await writeFile(src, initial);
    const uri = `nbd+unix:///disk?socket=${join(o.dir, 'nbd.sock')}`;
    const writer = new ShadowWriter(initial, random);
    writer.focus(WORKING_SET);
    const interval = String(20 + Math.floor(random() * 200));
    const common = ['--export', uri, '--json', '--checkpoint-interval', interval];
    let proc = new MirrorProcess(['mirror', src, dst, '--state', stateDir, '--copy-mode', random() < 0.5 ? 'background' : 'write-blocking', ...common]);
    let pivoted = false;
    for (let k = 0; k < perEpisode && kills.length < o.kills; k++) {
      await proc.event('start');
      const aims = o.aims ?? AIMS;
      const drawn = aims[Math.floor(random() * aims.length)]!;
      // Only a new job has a first pass; a resumed one copies what its state says is left.
      const aim = drawn === 'first-pass' && k > 0 ? 'copying' : drawn;
      const writing = aim !== 'first-pass';
      if (writing) await writer.start(uri, 4);
      if (aim === 'first-pass') {
        // Once the pass has copied something, within a checkpoint or two.
        await Promise.race([proc.event('progress', (e) => Number(e.offset) > 0), proc.event('ready')]);
        await sleep(random() * 2 * Number(interval));
      } else if (aim === 'copying') await sleep(random() * 100);
      else {
        await proc.event('ready');
        if (aim === 'ready') await sleep(random() * 100);
        else {
          proc.child.kill('SIGUSR1');
          await sleep(random() * 10);
        }
      }
      proc.child.kill('SIGKILL');
      await proc.exited;
      if (writing) await writer.stop();
      const s = status(stateDir);
      const phase = String(s.phase);
      const leftBytes = Number(s.leftBytes);
      if (phase === 'pivoted') {
        kills.push({ episode, aim, phase, leftBytes, resumeCopied: undefined });
        o.log?.(`kill ${kills.length}: aimed at ${aim}, found pivoted: the target is current`);
        pivoted = true;
        break;
      }
      proc = new MirrorProcess(['mirror', '--resume', stateDir, ...common]);
      const ready = await proc.event('ready');
      const copied = Number(ready.offset);
      kills.push({ episode, aim, phase, leftBytes, resumeCopied: copied });
      o.log?.(`kill ${kills.length}: aimed at ${aim}, found ${phase}: ${leftBytes} bytes left, the resume copied ${copied}`);
      if (copied > leftBytes) problems.push(`kill ${kills.length}: the resume copied ${copied} bytes; status said ${leftBytes} were left`);
    }
    if (!pivoted) {
      // The episode ends with a completed job: write a little more, then complete and stop serving.
      await proc.event('start');
      await writer.start(uri, 4);
      await sleep(50);
      await writer.stop();
      if (!proc.has('completed')) {
        await proc.event('ready');
        proc.child.kill('SIGUSR1');
        await proc.event('completed');
      }
      proc.child.kill('SIGINT');
      const code = await proc.exited;
      if (code !== 0) problems.push(`episode ${episode}: the last mirror exited with ${code}: ${proc.stderr.trim()}`);
    }
    const bad = writer.mismatches(await readFile(dst));
    mismatchedBlocks += bad.length;
    if (bad.length) problems.push(`episode ${episode}: ${bad.length} blocks of the target differ from the acknowledged writes (first at ${bad[0]! * 4096})`);
    o.log?.(`episode ${episode}: ${writer.acknowledged} writes acknowledged, ${bad.length} mismatched blocks`);
  }
  return { kills, episodes, mismatchedBlocks, problems, imageBytes };
}

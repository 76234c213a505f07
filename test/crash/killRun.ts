/**
 * The kill harness from the command line: `npm run test:kill` (50 kills), or
 * `tsx test/crash/killRun.ts KILLS [SEED]`. Exits 1 on any mismatch or problem.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runKills } from './killHarness.js';

const kills = Number(process.argv[2] ?? 50);
const seed = Number(process.argv[3] ?? Date.now() % 100000);
const dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-kill-'));
console.log(`kill harness: ${kills} kills, seed ${seed}, in ${dir}`);
try {
  const r = await runKills({ dir, kills, seed, log: (line) => console.log(line) });
  const resumed = r.kills.filter((k) => k.resumeCopied !== undefined);
  const left = resumed.map((k) => k.leftBytes).sort((a, b) => a - b);
  const byPhase = new Map<string, number>();
  for (const k of r.kills) byPhase.set(k.phase, (byPhase.get(k.phase) ?? 0) + 1);
  console.log(`${r.kills.length} kills in ${r.episodes} episodes (${[...byPhase].map(([p, n]) => `${n} ${p}`).join(', ')}): ${r.mismatchedBlocks} mismatched blocks`);
  if (left.length) {
    console.log(`left to copy after a kill: median ${left[left.length >> 1]} bytes, most ${left[left.length - 1]}, of a ${r.imageBytes}-byte image`);
  }
  for (const p of r.problems) console.log(`PROBLEM: ${p}`);
  process.exitCode = r.problems.length === 0 && r.mismatchedBlocks === 0 ? 0 : 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}

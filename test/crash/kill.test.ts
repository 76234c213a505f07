import { describe, expect, it } from 'vitest';
import { useScratchDir } from '../helpers/scratch.js';
import { runKills } from './killHarness.js';

const scratch = useScratchDir();

// A few real SIGKILLs of `blockmirror mirror --state` here; `npm run test:kill` runs 50.
describe('a mirror killed with SIGKILL and resumed', () => {
  it('ends with the current image holding every acknowledged write, each resume copying no more than status said was left', async () => {
    const result = await runKills({ dir: await scratch(), kills: 4, killsPerEpisode: 4, imageBytes: 32 << 20, seed: 20261201 });
    expect(result.problems).toEqual([]);
    expect(result.mismatchedBlocks).toBe(0);
    expect(result.kills).toHaveLength(4);
  }, 120_000);

  it('loses nothing when killed in the first pass, before any write (the bulk copy engine claiming from the bitmap)', async () => {
    const result = await runKills({ dir: await scratch(), kills: 3, killsPerEpisode: 1, aims: ['first-pass'], imageBytes: 128 << 20, seed: 20261202 });
    expect(result.problems).toEqual([]);
    expect(result.mismatchedBlocks).toBe(0);
    expect(result.kills.map((k) => k.aim)).toEqual(['first-pass', 'first-pass', 'first-pass']);
  }, 120_000);
});

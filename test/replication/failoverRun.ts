/**
 * The failover harness from the command line: `npm run test:failover` (30 seeds, each run twice:
 * a failover to the last checkpoint, and one to the latest write), or
 * `tsx test/replication/failoverRun.ts SEEDS [FIRST_SEED]`. Exits 1 on any mismatch.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { failoverRound } from './failoverHarness.js';

const seeds = Number(process.argv[2] ?? 30);
const first = Number(process.argv[3] ?? 1);
const dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-failover-'));
let mismatches = 0;
try {
  for (let seed = first; seed < first + seeds; seed++) {
    for (const to of ['checkpoint', 'latest'] as const) {
      const r = await failoverRound(join(dir, 'round'), seed, { to });
      if (!r.equal) mismatches++;
      const where = to === 'checkpoint' ? `to checkpoint ${r.failedOverTo}` : 'to the latest write';
      console.log(`seed ${seed}: killed after ${r.checkpoints} checkpoints; failed over ${where}: ${r.equal ? 'equal' : 'MISMATCH'}`);
    }
  }
  console.log(`${seeds} seeds, each failed over to its checkpoint and to the latest write: ${mismatches} mismatches`);
  process.exitCode = mismatches === 0 ? 0 : 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}

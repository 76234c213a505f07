/**
 * The failover harness from the command line: `npm run test:failover` (30 seeds), or
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
    const r = await failoverRound(join(dir, 'round'), seed);
    if (!r.equal) mismatches++;
    console.log(`seed ${seed}: killed after ${r.checkpoints} checkpoints; failed over to checkpoint ${r.failedOverTo}: ${r.equal ? 'equal' : 'MISMATCH'}`);
  }
  console.log(`${seeds} seeds: ${mismatches} mismatches`);
  process.exitCode = mismatches === 0 ? 0 : 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}

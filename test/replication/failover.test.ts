import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useScratchDir } from '../helpers/scratch.js';
import { failoverRound } from './failoverHarness.js';

const scratch = useScratchDir();

// Two seeds here; `npm run test:failover` runs 30.
describe('a primary killed with SIGKILL while it replicates with checkpoints every 200 ms', () => {
  for (const seed of [11, 12]) {
    it(`leaves a secondary that fails over to its last checkpoint, equal to what the primary had acknowledged then (seed ${seed})`, async () => {
      const r = await failoverRound(join(await scratch(), 'round'), seed);
      expect(r.failedOverTo).toBeGreaterThanOrEqual(1);
      expect(r.equal).toBe(true);
    }, 90_000);
  }
});

import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useScratchDir } from '../helpers/scratch.js';
import { failoverRound } from './failoverHarness.js';

const scratch = useScratchDir();

// One round of each here; `npm run test:failover` runs 30 seeds of both.
describe('a primary killed with SIGKILL while it replicates with checkpoints every 200 ms', () => {
  it('leaves a secondary that fails over to its last checkpoint, equal to what the primary had acknowledged then', async () => {
    const r = await failoverRound(join(await scratch(), 'round'), 11);
    expect(r.failedOverTo).toBeGreaterThanOrEqual(1);
    expect(r.equal).toBe(true);
  }, 90_000);

  it('in write-blocking mode, leaves a secondary that fails over to the latest write holding every write the primary acknowledged', async () => {
    const r = await failoverRound(join(await scratch(), 'round'), 12, { to: 'latest' });
    expect(r.equal).toBe(true);
  }, 90_000);
});

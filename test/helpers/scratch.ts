import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';

/**
 * A fresh scratch directory per test, removed afterwards. Lives on the same filesystem as the
 * project's temp dir (not tmpfs where that matters: O_DIRECT needs a real filesystem).
 */
export function useScratchDir(): () => Promise<string> {
  const made: string[] = [];
  afterEach(async () => {
    await Promise.all(made.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  });
  return async () => {
    const dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-test-'));
    made.push(dir);
    return dir;
  };
}

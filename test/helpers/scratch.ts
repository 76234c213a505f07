import { constants, mkdtemp, open, rm } from 'node:fs/promises';
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

/**
 * Why O_DIRECT cannot be tested where scratch directories are made (tmpfs refuses it), or
 * undefined when it can. For `it.skipIf(...)`, so a skipped test says why.
 */
export async function directIoUnavailable(): Promise<string | undefined> {
  const dir = await mkdtemp(join(process.env.BLOCKMIRROR_TEST_DIR ?? tmpdir(), 'bm-probe-'));
  try {
    const handle = await open(join(dir, 'probe'), constants.O_RDWR | constants.O_CREAT | constants.O_DIRECT, 0o600);
    await handle.close();
    return undefined;
  } catch (err) {
    return `the file system of ${dir} refuses O_DIRECT (${(err as NodeJS.ErrnoException).code ?? String(err)})`;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

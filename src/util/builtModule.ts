import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(import.meta.url);
/** `src` when running from TypeScript sources (vitest, tsx), `dist` when built. */
const codeRoot = dirname(dirname(here));
const fromSources = here.endsWith('.ts');

/**
 * Path of a compiled module, by its path below `src` (`workers/copyWorker.js`). Worker threads
 * need JavaScript: Node 20 cannot load TypeScript, so code run from sources starts workers
 * from `dist` (which `npm test` builds first).
 */
export function builtModulePath(relative: string): string {
  const path = fromSources ? join(dirname(codeRoot), 'dist', relative) : join(codeRoot, relative);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`npm run build\` first (worker threads load the compiled code)`);
  }
  return path;
}

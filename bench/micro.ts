/**
 * Micro benchmarks: `npm run bench` runs every suite, `npm run bench -- bitmap` only the named
 * ones. A suite lives in a file of its own (bench/<name>.ts) and is listed in SUITES.
 */
import { bitmapSuite } from './bitmap.js';
import type { MicroSuite } from './suite.js';

const SUITES: readonly MicroSuite[] = [bitmapSuite];

const wanted = process.argv.slice(2);
const unknown = wanted.filter((name) => !SUITES.some((s) => s.name === name));
if (unknown.length > 0) {
  process.stderr.write(`unknown suite(s): ${unknown.join(', ')}; suites: ${SUITES.map((s) => s.name).join(', ')}\n`);
  process.exit(1);
}
for (const suite of SUITES) {
  if (wanted.length === 0 || wanted.includes(suite.name)) await suite.run();
}

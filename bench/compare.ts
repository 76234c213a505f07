/**
 * Performance regression check: compares a new benchmark report with a saved baseline.
 *
 *   npm run bench:compare -- BASELINE.json NEW.json [--tolerance 10%] [--tool blockmirror] [--metric ratio|seconds]
 *
 * By default it compares blockmirror's time as a ratio to nbdcopy's in the same run, which holds
 * across machines and noisy minutes better than seconds do; `--metric seconds` compares medians.
 * Exits 1 when any compared row got slower by more than the tolerance, 2 on unreadable input.
 */
import { parseArgs } from 'node:util';
import { compareReports, parseTolerance, readRows } from './lib/compareReports.js';
import { markdownTable } from './lib/stats.js';

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      tolerance: { type: 'string', default: '10%' },
      tool: { type: 'string', default: 'blockmirror' },
      metric: { type: 'string', default: 'ratio' },
    },
  });
  if (positionals.length !== 2 || (values.metric !== 'ratio' && values.metric !== 'seconds')) {
    console.error('usage: bench:compare BASELINE.json NEW.json [--tolerance 10%] [--tool NAME] [--metric ratio|seconds]');
    return 2;
  }
  const [baseline, current] = await Promise.all(positionals.map(readRows));
  const rows = compareReports(baseline!, current!, {
    tool: values.tool!,
    metric: values.metric,
    tolerance: parseTolerance(values.tolerance!),
  });
  console.log(
    markdownTable(
      ['row', 'baseline', 'new', 'change', 'verdict'],
      rows.map((r) =>
        r.status === 'missing'
          ? [r.key, '-', '-', '-', 'missing in new report']
          : [r.key, r.before.toFixed(3), r.after.toFixed(3), `${(r.change * 100).toFixed(1)}%`, r.status],
      ),
    ),
  );
  const bad = rows.filter((r) => r.status === 'regressed' || r.status === 'missing');
  if (bad.length) console.error(`${bad.length} row(s) regressed beyond ${values.tolerance} or are missing`);
  return bad.length ? 1 : 0;
}

process.exitCode = await main().catch((err: unknown) => {
  console.error(`bench:compare: ${err instanceof Error ? err.message : String(err)}`);
  return 2;
});

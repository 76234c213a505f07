import { readFile } from 'node:fs/promises';

/** A row of any benchmark report this script understands. */
export interface Row {
  readonly tool: string;
  readonly variant: string;
  readonly cache: string;
  readonly median: number;
  readonly ratioToNbdcopy?: number;
}

/** The verdict for one row. */
export type Comparison =
  | { readonly status: 'ok' | 'regressed' | 'improved'; readonly key: string; readonly before: number; readonly after: number; readonly change: number }
  | { readonly status: 'missing'; readonly key: string };

const key = (r: Row): string => `${r.tool} ${r.variant} ${r.cache}`;

export function parseTolerance(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(text.trim());
  if (!m) throw new Error(`--tolerance: '${text}' is not a percentage like 10%`);
  return m[2] ? Number(m[1]) / 100 : Number(m[1]);
}

export async function readRows(path: string): Promise<Row[]> {
  const report = JSON.parse(await readFile(path, 'utf8')) as { results?: Row[] };
  if (!Array.isArray(report.results)) throw new Error(`${path} is not a benchmark report (no results array)`);
  return report.results;
}

/** Compares the rows of `tool` in two reports. */
export function compareReports(
  baseline: readonly Row[],
  current: readonly Row[],
  options: { tool: string; metric: 'ratio' | 'seconds'; tolerance: number },
): Comparison[] {
  const now = new Map(current.map((r) => [key(r), r]));
  return baseline
    .filter((r) => r.tool === options.tool)
    .map((before): Comparison => {
      const after = now.get(key(before));
      if (!after) return { status: 'missing', key: key(before) };
      const useRatio = options.metric === 'ratio' && before.ratioToNbdcopy !== undefined && after.ratioToNbdcopy !== undefined;
      const b = useRatio ? before.ratioToNbdcopy! : before.median;
      const a = useRatio ? after.ratioToNbdcopy! : after.median;
      const change = a / b - 1;
      const status = change > options.tolerance ? 'regressed' : change < -options.tolerance ? 'improved' : 'ok';
      return { status, key: key(before), before: b, after: a, change };
    });
}


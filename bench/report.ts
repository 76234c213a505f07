/**
 * The summary table at the top of docs/perf.md: blockmirror against each peer on each benchmark,
 * built from the benchmark JSON files in bench/results/ (the newest run of each benchmark, image,
 * cache and peer), each row naming its date, its machine and the command that reproduces it.
 *
 *   npm run bench:report [-- --results DIR] [--doc FILE] [--check]
 *
 * Reads the `--json` output of bench:copy (`kind: 'copy'`), bench:qmp (`kind: 'qmp'`),
 * bench:verify (`kind: 'verify'`) and bench:nbd (no kind: `copy` and `serve` maps of timings);
 * the files of bench:mirror, bench:state and bench:replication have no peer and are left out. The table goes between `<!-- bench:report start -->` and
 * `<!-- bench:report end -->` in the document (inserted after its first paragraph if missing);
 * nothing else in it changes. `--check` writes nothing and exits 1 if the table is out of date.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { CopyBenchReport, CopyBenchResult } from './copy.js';
import type { MachineInfo } from './lib/machine.js';
import { median } from './lib/stats.js';

export const START_MARKER = '<!-- bench:report start -->';
export const END_MARKER = '<!-- bench:report end -->';

/** One line of the summary: blockmirror and one peer on one benchmark, image and cache state. */
export interface SummaryRow {
  readonly benchmark: string;
  readonly image: string;
  readonly cache: string;
  readonly peer: string;
  /** Medians in seconds (lower is better). */
  readonly blockmirror: number;
  readonly peerMedian: number;
  /** blockmirror's CPU-seconds over the peer's, where the benchmark measures them. */
  readonly cpuRatio: number | undefined;
  /** YYYY-MM-DD, or `unknown`. */
  readonly date: string;
  /** When the run was, as precisely as the report says (an ISO time, else the date): newer wins. */
  readonly when: string;
  readonly machine: string;
  readonly command: string;
  /** Orders rows: benchmark, then image, then cache, then peer. */
  readonly order: readonly number[];
}

const GiB = 2 ** 30;
/** The tools bench:copy runs unless told otherwise, in its order. */
const COPY_TOOLS = ['blockmirror', 'mirror', 'nbdcopy', 'qemu-img', 'cp', 'dd'] as const;
/** bench:copy's `mirror` (`blockmirror mirror --complete-on-ready`) is set against these two. */
const MIRROR_PEERS = ['blockmirror', 'nbdcopy'];
const CACHE_ORDER = ['warm', 'cold'];

/** 1073741824 → `1G`, 65536 → `64K`: the form bench commands take. */
export function sizeArgument(bytes: number): string {
  for (const [unit, factor] of [['T', 2 ** 40], ['G', GiB], ['M', 2 ** 20], ['K', 1024]] as const) {
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${unit}`;
  }
  return String(bytes);
}

/** 1073741824 → `1 GiB`, 1.5 GiB → `1.5 GiB`. */
function sizeText(bytes: number): string {
  for (const [unit, factor] of [['TiB', 2 ** 40], ['GiB', GiB], ['MiB', 2 ** 20]] as const) {
    if (bytes >= factor) return `${Number((bytes / factor).toFixed(1))} ${unit}`;
  }
  return `${bytes} B`;
}

/** The machine a report ran on, in one line. */
export function machineText(machine: MachineInfo | string | undefined): string {
  if (machine === undefined) return 'unknown';
  if (typeof machine === 'string') return machine;
  return `${machine.cores} × ${machine.cpu}, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, ${machine.filesystem}, Node ${machine.node}`;
}

/** The report's time (ISO), else a date in its file name, else `unknown`. */
function whenOf(report: { date?: unknown }, file: string): string {
  if (typeof report.date === 'string' && /^\d{4}-\d{2}-\d{2}/.test(report.date)) return report.date;
  return /\d{4}-\d{2}-\d{2}/.exec(basename(file))?.[0] ?? 'unknown';
}

/** When and on which day a report ran, for its rows. */
function datesOf(report: { date?: unknown }, file: string): { when: string; date: string } {
  const when = whenOf(report, file);
  return { when, date: when.slice(0, 10) };
}

const VARIANT_ORDER = ['random', 'sparse', 'sparse64'];

function copyImageText(r: CopyBenchResult): string {
  if (r.variant === 'random') return `${sizeText(r.size)} random`;
  if (r.variant === 'sparse') return `${sizeText(r.size)}, half holes`;
  if (r.variant === 'sparse64') return `${sizeText(r.size)}, 1 GiB data`;
  return `${sizeText(r.size)} ${r.variant}`;
}

/** The bench:copy command line that produced `report` into `file`. */
export function copyCommand(report: CopyBenchReport, file: string): string {
  const variants = [...new Set(report.results.map((r) => r.variant))];
  const caches = [...new Set(report.results.map((r) => r.cache))];
  const tools = COPY_TOOLS.filter((t) => report.results.some((r) => r.tool === t));
  const extra = report.results.map((r) => r.tool).filter((t) => !(COPY_TOOLS as readonly string[]).includes(t));
  const args = ['npm run bench:copy --'];
  // sparse64 is always 64 GiB: --size matters only to the other variants.
  if (variants.some((v) => v !== 'sparse64')) args.push(`--size ${sizeArgument(report.size)}`);
  args.push(`--runs ${report.runs}`, `--cache ${caches.join(',')}`, `--variants ${variants.join(',')}`);
  if (tools.length !== COPY_TOOLS.length || extra.length) args.push(`--tools ${[...tools, ...new Set(extra)].join(',')}`);
  args.push(`--json ${file}`);
  return args.join(' ');
}

/**
 * Rows of a bench:copy report: blockmirror's copy against every other tool but the mirror, and
 * the mirror with no writer against blockmirror's copy and nbdcopy, per image and cache.
 */
function copyRows(report: CopyBenchReport, file: string): SummaryRow[] {
  const rows: SummaryRow[] = [];
  const dates = datesOf(report, file);
  const machine = machineText(report.machine);
  const command = copyCommand(report, file);
  for (const mine of report.results.filter((r) => r.tool === 'blockmirror' || r.tool === 'mirror')) {
    const mirror = mine.tool === 'mirror';
    for (const peer of report.results) {
      if (peer.variant !== mine.variant || peer.cache !== mine.cache) continue;
      if (mirror ? !MIRROR_PEERS.includes(peer.tool) : peer.tool === 'blockmirror' || peer.tool === 'mirror') continue;
      const peerIndex = (COPY_TOOLS as readonly string[]).indexOf(peer.tool);
      rows.push({
        benchmark: mirror ? 'live mirror, no writer, until switched over' : 'bulk copy',
        image: copyImageText(mine),
        // sparse64 is never warmed (that would fill the cache with 64 GiB of zeros).
        cache: mine.variant === 'sparse64' && mine.cache === 'warm' ? 'not dropped' : mine.cache,
        peer: mirror && peer.tool === 'blockmirror' ? 'blockmirror copy' : peer.tool,
        blockmirror: mine.median,
        peerMedian: peer.median,
        cpuRatio: peer.cpuMedian > 0 ? mine.cpuMedian / peer.cpuMedian : undefined,
        ...dates,
        machine,
        command,
        order: [mirror ? 1 : 0, mine.size, indexOr(VARIANT_ORDER, mine.variant), indexOr(CACHE_ORDER, mine.cache), peerIndex < 0 ? 99 : peerIndex],
      });
    }
  }
  return rows;
}

/** What bench:qmp writes: rounds by image size and writer profile (older reports: one size, one unthrottled writer). */
interface QmpBenchReport {
  readonly kind: 'qmp';
  readonly date: string;
  readonly machine: MachineInfo;
  readonly size?: number;
  readonly sizes?: readonly number[];
  readonly writers?: readonly string[];
  readonly runs: number;
  readonly fioSeconds: number;
  /** The writer started once the job was ready: a report of the cost of staying in sync, not of time to ready. */
  readonly writerAfterReady?: boolean;
  readonly results: ReadonlyArray<{ readonly daemon: string; readonly readySeconds: number; readonly size?: number; readonly writer?: string; readonly cpuSeconds?: number }>;
}

function qmpRows(report: QmpBenchReport, file: string): SummaryRow[] {
  if (report.writerAfterReady) return [];
  const sizes = report.sizes ?? (report.size !== undefined ? [report.size] : []);
  const writers = report.writers ?? [undefined];
  const command = report.sizes
    ? `npm run bench:qmp -- --sizes ${sizes.map(sizeArgument).join(',')} --writers ${writerArguments(report.writers ?? [])} --runs ${report.runs} --fio-seconds ${report.fioSeconds} --json ${file}`
    : `npm run bench:qmp -- --size ${sizeArgument(sizes[0]!)} --runs ${report.runs} --fio-seconds ${report.fioSeconds} --json ${file}`;
  const rows: SummaryRow[] = [];
  // The daemon over QMP, and (since bench:qmp runs it too) `blockmirror mirror --export`.
  const contenders = [
    { daemon: 'blockmirror', benchmark: 'live mirror over QMP, time to ready', order: 2 },
    { daemon: 'mirror-command', benchmark: 'live mirror, blockmirror mirror --export, time to ready', order: 2.5 },
  ];
  for (const contender of contenders) {
    for (const size of sizes) {
      for (const [w, writer] of writers.entries()) {
        const rounds = (daemon: string) => report.results.filter((r) => r.daemon === daemon && (r.size ?? size) === size && r.writer === writer);
        const times = (daemon: string): number[] => rounds(daemon).map((r) => r.readySeconds);
        const cpu = (daemon: string): number[] => rounds(daemon).flatMap((r) => (r.cpuSeconds === undefined ? [] : [r.cpuSeconds]));
        const mine = times(contender.daemon);
        const peer = times('qemu-storage-daemon');
        const [myCpu, peerCpu] = [cpu(contender.daemon), cpu('qemu-storage-daemon')];
        if (mine.length === 0 || peer.length === 0) continue;
        rows.push({
          benchmark: contender.benchmark,
          image: `${sizeText(size)}, a quarter holes, ${writer === undefined ? 'fio writing' : writer === 'no writer' ? 'no writer' : `fio writing, ${writer}`}`,
          cache: 'warm',
          peer: 'qemu-storage-daemon',
          blockmirror: median(mine),
          peerMedian: median(peer),
          cpuRatio: myCpu.length && peerCpu.length ? median(myCpu) / median(peerCpu) : undefined,
          ...datesOf(report, file),
          machine: machineText(report.machine),
          command,
          order: [contender.order, size, w],
        });
      }
    }
  }
  return rows;
}

/** The --writers argument that names these profiles again. */
function writerArguments(names: readonly string[]): string {
  return names.map((n) => (n === 'no writer' ? 'none' : n === 'unthrottled' ? 'max' : n.replace(/ IOPS$/, ''))).join(',');
}

/** What bench:nbd writes: seconds of each run, by contender. */
interface NbdBenchReport {
  readonly size: number;
  readonly runs: number;
  readonly machine: string;
  readonly date?: string;
  readonly copy: Readonly<Record<string, readonly number[]>>;
  readonly serve: Readonly<Record<string, readonly number[]>>;
}

function nbdRows(report: NbdBenchReport, file: string): SummaryRow[] {
  const base = {
    cpuRatio: undefined,
    ...datesOf(report, file),
    machine: machineText(report.machine),
    command: `npm run bench:nbd -- --size ${sizeArgument(report.size)} --runs ${report.runs} --json ${file}`,
  };
  const rows: SummaryRow[] = [];
  const pairs = [
    { benchmark: 'copy into qemu-nbd', timings: report.copy, mine: 'blockmirror copy', peer: 'nbdcopy --flush', order: 1 },
    { benchmark: 'NBD server, read whole by nbdcopy', timings: report.serve, mine: 'blockmirror serve --read-only', peer: 'qemu-nbd --read-only', order: 1.5 },
  ];
  for (const p of pairs) {
    const table = p.timings;
    const mine = table[p.mine];
    const peer = table[p.peer];
    if (!mine?.length || !peer?.length) continue;
    rows.push({
      ...base,
      benchmark: p.benchmark,
      image: `${sizeText(report.size)}, a quarter holes`,
      // bench:nbd reads the source into the page cache before the runs.
      cache: 'warm',
      peer: p.peer,
      blockmirror: median(mine),
      peerMedian: median(peer),
      order: [p.order, report.size],
    });
  }
  return rows;
}

/** What bench:verify writes: each tool's runs per cache. */
interface VerifyBenchReport {
  readonly kind: 'verify';
  readonly date: string;
  readonly machine: MachineInfo;
  readonly size: number;
  readonly rounds: number;
  readonly results: ReadonlyArray<{ readonly tool: string; readonly cache: string; readonly medianSeconds: number; readonly medianCpu: number }>;
}

function verifyRows(report: VerifyBenchReport, file: string): SummaryRow[] {
  const rows: SummaryRow[] = [];
  const caches = [...new Set(report.results.map((r) => r.cache))];
  for (const cache of caches) {
    const mine = report.results.find((r) => r.cache === cache && r.tool === 'blockmirror verify');
    const peer = report.results.find((r) => r.cache === cache && r.tool === 'qemu-img compare');
    if (!mine || !peer) continue;
    rows.push({
      benchmark: 'verify, identical images',
      image: `${sizeText(report.size)} random`,
      cache,
      peer: 'qemu-img compare',
      blockmirror: mine.medianSeconds,
      peerMedian: peer.medianSeconds,
      cpuRatio: peer.medianCpu > 0 ? mine.medianCpu / peer.medianCpu : undefined,
      ...datesOf(report, file),
      machine: machineText(report.machine),
      command: `npm run bench:verify -- --size ${sizeArgument(report.size)} --rounds ${report.rounds} --caches ${caches.join(',')} --json ${file}`,
      order: [3, report.size, indexOr(CACHE_ORDER, cache)],
    });
  }
  return rows;
}

/** Benchmarks with no peer to compare with: their figures are in the notes of perf.md, not in the summary. */
const KINDS_WITHOUT_PEERS = ['mirror', 'state', 'replication', 'lanes'];

/** The rows one benchmark JSON file gives (none for a kind without peers); `file` as the command should name it. */
export function rowsFromReport(report: unknown, file: string): SummaryRow[] {
  if (typeof report !== 'object' || report === null) throw new Error(`${file}: not a JSON object`);
  const r = report as { kind?: unknown; results?: unknown; copy?: unknown; serve?: unknown };
  if (r.kind === 'copy' && Array.isArray(r.results)) return copyRows(report as CopyBenchReport, file);
  if (r.kind === 'qmp' && Array.isArray(r.results)) return qmpRows(report as QmpBenchReport, file);
  if (r.kind === 'verify' && Array.isArray(r.results)) return verifyRows(report as VerifyBenchReport, file);
  if (typeof r.kind === 'string' && KINDS_WITHOUT_PEERS.includes(r.kind)) return [];
  if (r.kind === undefined && typeof r.copy === 'object' && typeof r.serve === 'object') return nbdRows(report as NbdBenchReport, file);
  throw new Error(`${file}: not a benchmark report this script reads (kind ${JSON.stringify(r.kind)})`);
}

/**
 * The newest row of each benchmark, image, cache and peer, in table order. Of two runs at the same
 * time (two files that give no more than a day), the one given later wins: `main` reads the files
 * in name order, so `copy-X-2026-12-01b.json` replaces `copy-X-2026-12-01.json`.
 */
export function latestRows(rows: readonly SummaryRow[]): SummaryRow[] {
  const newest = new Map<string, SummaryRow>();
  for (const row of rows) {
    const key = [row.benchmark, row.image, row.cache, row.peer].join('\u0000');
    const held = newest.get(key);
    if (!held || row.when >= held.when) newest.set(key, row);
  }
  return [...newest.values()].sort((a, b) => compareOrder(a.order, b.order) || a.peer.localeCompare(b.peer));
}

function compareOrder(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function indexOr(list: readonly string[], value: string): number {
  const i = list.indexOf(value);
  return i < 0 ? list.length : i;
}

/** A Markdown table cell: pipes escaped. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|');
}

/** The summary as Markdown: a short preface and the table. */
export function summaryTable(rows: readonly SummaryRow[]): string {
  const header = ['benchmark', 'image', 'cache', 'peer', 'blockmirror s', 'peer s', 'wall ratio', 'CPU ratio', 'date', 'machine', 'command'];
  const lines = [
    '## Summary: blockmirror against each peer',
    '',
    'Written by `npm run bench:report` from the JSON files in bench/results/ (the newest run of each',
    'benchmark, image, cache and peer): rerun it rather than edit this table. Medians of wall-clock',
    'seconds; a ratio is blockmirror over the peer in the same run, so under 1.00 blockmirror is',
    'faster (wall) or used less CPU (user + system seconds of the processes). The sections below are',
    'the notes of each pass: what was measured, how, and why.',
    '',
    `| ${header.join(' | ')} |`,
    `| ${header.map((h) => (/ s$|ratio/.test(h) ? '---:' : '---')).join(' | ')} |`,
  ];
  for (const r of rows) {
    const ratio = r.blockmirror / r.peerMedian;
    lines.push(
      `| ${[
        r.benchmark,
        r.image,
        r.cache,
        r.peer,
        r.blockmirror.toFixed(2),
        r.peerMedian.toFixed(2),
        Number.isFinite(ratio) ? ratio.toFixed(2) : '–',
        r.cpuRatio === undefined || !Number.isFinite(r.cpuRatio) ? '–' : r.cpuRatio.toFixed(2),
        r.date,
        r.machine,
        `\`${r.command}\``,
      ]
        .map(cell)
        .join(' | ')} |`,
    );
  }
  if (rows.length === 0) lines.push('', 'No benchmark results with a peer in bench/results/ yet.');
  return lines.join('\n');
}

/**
 * `doc` with `content` between the report markers. Without markers they are inserted after the
 * first paragraph (the first run of text lines that is not a heading); nothing else changes.
 */
export function withReport(doc: string, content: string): string {
  const block = `${START_MARKER}\n${content}\n${END_MARKER}`;
  const start = doc.indexOf(START_MARKER);
  const end = doc.indexOf(END_MARKER);
  if (start >= 0 && end > start) return doc.slice(0, start) + block + doc.slice(end + END_MARKER.length);
  if (start >= 0 || end >= 0) throw new Error('the document has one report marker without the other');
  const lines = doc.split('\n');
  let i = 0;
  while (i < lines.length && (lines[i]!.trim() === '' || lines[i]!.startsWith('#'))) i++;
  if (i === lines.length) return `${doc.replace(/\n*$/, '\n\n')}${block}\n`;
  while (i < lines.length && lines[i]!.trim() !== '') i++;
  return [...lines.slice(0, i), '', block, ...lines.slice(i)].join('\n');
}

async function main(): Promise<void> {
  const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
  const { values } = parseArgs({
    options: {
      results: { type: 'string', default: join(root, 'bench/results') },
      doc: { type: 'string', default: join(root, 'docs/perf.md') },
      check: { type: 'boolean', default: false },
    },
  });
  const dir = resolve(values.results!);
  const files = (await readdir(dir)).filter((f) => f.endsWith('.json')).sort();
  const rows: SummaryRow[] = [];
  for (const f of files) {
    const path = join(dir, f);
    const found = rowsFromReport(JSON.parse(await readFile(path, 'utf8')), relative(root, path));
    if (found.length === 0) console.error(`bench:report: ${f}: no peer to compare with, left out`);
    rows.push(...found);
  }
  const table = latestRows(rows);
  const docPath = resolve(values.doc!);
  const before = await readFile(docPath, 'utf8');
  const after = withReport(before, summaryTable(table));
  if (values.check) {
    if (after !== before) {
      console.error(`bench:report: ${relative(root, docPath)} is out of date: run npm run bench:report`);
      process.exitCode = 1;
    }
    return;
  }
  if (after !== before) await writeFile(docPath, after);
  console.error(`bench:report: ${table.length} rows from ${files.length} files into ${relative(root, docPath)}`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) await main();

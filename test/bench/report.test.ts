import { describe, expect, it } from 'vitest';
import type { CopyBenchReport, CopyBenchResult } from '../../bench/copy.js';
import { copyCommand, END_MARKER, latestRows, rowsFromReport, sizeArgument, START_MARKER, summaryTable, withReport } from '../../bench/report.js';

const GiB = 2 ** 30;
const machine = { cpu: 'AMD EPYC', cores: 2, memoryGiB: 24, kernel: '6.18.44', node: 'v20.20.2', filesystem: 'ext2/ext3' };

function result(tool: string, variant: string, cache: string, median: number, cpuMedian: number, size = GiB): CopyBenchResult {
  return {
    tool,
    variant,
    cache,
    size,
    seconds: [median],
    median,
    cpuSeconds: [cpuMedian],
    cpuMedian,
    cacheGrowth: [0],
    cacheGrowthMedian: 0,
    worstToMedian: 1,
  };
}

function copyReport(date: string, results: CopyBenchResult[], size = GiB, runs = 5): CopyBenchReport {
  return { kind: 'copy', date, machine, size, runs, results };
}

/** A bench:qmp report of one round of 10 s: its sizes, writer profiles and results, and anything else given. */
function qmpReport(fields: { sizes: number[]; writers: string[]; results: object[] } & Record<string, unknown>): Record<string, unknown> {
  return { kind: 'qmp', date: '2026-12-01T10:00:00Z', machine, runs: 1, fioSeconds: 10, ...fields };
}

describe('bench:report', () => {
  it('pairs blockmirror with every peer of the same image and cache, with wall and CPU ratios', () => {
    const report = copyReport('2026-12-01T14:28:15.898Z', [
      result('blockmirror', 'random', 'warm', 1.2, 1.22),
      result('nbdcopy', 'random', 'warm', 0.5, 0.49),
      result('cp', 'random', 'warm', 0.6, 0.3),
      result('blockmirror', 'random', 'cold', 1.6, 1.5),
      result('nbdcopy', 'random', 'cold', 1.0, 0.75),
    ]);
    const rows = latestRows(rowsFromReport(report, 'bench/results/copy-1G.json'));
    expect(rows.map((r) => [r.image, r.cache, r.peer])).toEqual([
      ['1 GiB random', 'warm', 'nbdcopy'],
      ['1 GiB random', 'warm', 'cp'],
      ['1 GiB random', 'cold', 'nbdcopy'],
    ]);
    const table = summaryTable(rows);
    expect(table).toContain(
      '| bulk copy | 1 GiB random | warm | nbdcopy | 1.20 | 0.50 | 2.40 | 2.49 | 2026-12-01 | 2 × AMD EPYC, 24 GiB, Linux 6.18.44, ext2/ext3, Node v20.20.2 | ' +
        '`npm run bench:copy -- --size 1G --runs 5 --cache warm,cold --variants random --tools blockmirror,nbdcopy,cp --json bench/results/copy-1G.json` |',
    );
    expect(table).toContain('| bulk copy | 1 GiB random | cold | nbdcopy | 1.60 | 1.00 | 1.60 | 2.00 |');
  });

  it('keeps the newest run of each benchmark, image, cache and peer', () => {
    const old = copyReport('2026-11-01T00:00:00Z', [result('blockmirror', 'random', 'warm', 3, 3), result('nbdcopy', 'random', 'warm', 1, 1)]);
    const now = copyReport('2026-12-01T00:00:00Z', [result('blockmirror', 'random', 'warm', 2, 2), result('nbdcopy', 'random', 'warm', 1, 1)]);
    const rows = latestRows([...rowsFromReport(now, 'b.json'), ...rowsFromReport(old, 'a.json')]);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.date).toBe('2026-12-01');
    expect(rows[0]!.blockmirror).toBe(2);
    // Two runs of one day, by the time in the report; a tie goes to the file read last.
    const later = copyReport('2026-12-01T09:00:00Z', [result('blockmirror', 'random', 'warm', 5, 5), result('nbdcopy', 'random', 'warm', 1, 1)]);
    expect(latestRows([...rowsFromReport(later, 'a.json'), ...rowsFromReport(now, 'b.json')])[0]!.blockmirror).toBe(5);
    expect(latestRows([...rowsFromReport(now, 'b.json'), ...rowsFromReport(now, 'c.json')])[0]!.command).toMatch(/c\.json$/);
  });

  it('names the command that reproduces a report', () => {
    const sparse64 = copyReport(
      '2026-12-01',
      ['blockmirror', 'nbdcopy', 'qemu-img', 'cp'].flatMap((t) => [result(t, 'sparse64', 'warm', 1, 1, 64 * GiB), result(t, 'sparse64', 'cold', 1, 1, 64 * GiB)]),
      4 * GiB,
      3,
    );
    expect(copyCommand(sparse64, 'bench/results/copy-sparse64-2026-12-01.json')).toBe(
      'npm run bench:copy -- --runs 3 --cache warm,cold --variants sparse64 --tools blockmirror,nbdcopy,qemu-img,cp --json bench/results/copy-sparse64-2026-12-01.json',
    );
    const all = copyReport('2026-12-01', ['blockmirror', 'mirror', 'nbdcopy', 'qemu-img', 'cp', 'dd'].map((t) => result(t, 'random', 'warm', 1, 1, 4 * GiB)), 4 * GiB);
    expect(copyCommand(all, 'x.json')).toBe('npm run bench:copy -- --size 4G --runs 5 --cache warm --variants random --json x.json');
    const sparse = rowsFromReport(sparse64, 'x.json');
    expect(new Set(sparse.map((r) => r.cache))).toEqual(new Set(['not dropped', 'cold']));
  });

  it('sets the mirror with no writer against blockmirror\'s copy and nbdcopy, and leaves it out of the copy\'s peers', () => {
    const report = copyReport('2026-12-01', [result('blockmirror', 'random', 'warm', 2, 1), result('mirror', 'random', 'warm', 2.2, 1), result('nbdcopy', 'random', 'warm', 2, 1)], GiB);
    const rows = rowsFromReport(report, 'x.json').map((r) => [r.benchmark, r.peer, r.blockmirror, r.peerMedian]);
    expect(rows).toEqual([
      ['bulk copy', 'nbdcopy', 2, 2],
      ['live mirror, no writer, until switched over', 'blockmirror copy', 2.2, 2],
      ['live mirror, no writer, until switched over', 'nbdcopy', 2.2, 2],
    ]);
  });

  it('reads a bench:qmp report with writer profiles as one row per image size and writer', () => {
    const rows = rowsFromReport(
      qmpReport({
        sizes: [512 * 1024 * 1024, 4 * GiB],
        writers: ['no writer', '3000 IOPS'],
        fioSeconds: 15,
        results: [
          { daemon: 'blockmirror', size: 4 * GiB, writer: 'no writer', readySeconds: 3 },
          { daemon: 'qemu-storage-daemon', size: 4 * GiB, writer: 'no writer', readySeconds: 2 },
          { daemon: 'blockmirror', size: 4 * GiB, writer: '3000 IOPS', readySeconds: 5 },
          { daemon: 'qemu-storage-daemon', size: 4 * GiB, writer: '3000 IOPS', readySeconds: 4 },
        ],
      }),
      'q.json',
    );
    expect(rows.map((r) => [r.image, r.blockmirror, r.peerMedian])).toEqual([
      ['4 GiB, a quarter holes, no writer', 3, 2],
      ['4 GiB, a quarter holes, fio writing, 3000 IOPS', 5, 4],
    ]);
    expect(rows[0]!.command).toBe('npm run bench:qmp -- --sizes 512M,4G --writers none,3000 --runs 1 --fio-seconds 15 --json q.json');
  });

  it('reads the mirror command of a bench:qmp report as rows of its own against QEMU', () => {
    const rows = rowsFromReport(
      qmpReport({
        sizes: [4 * GiB],
        writers: ['no writer'],
        results: [
          { daemon: 'blockmirror', size: 4 * GiB, writer: 'no writer', readySeconds: 3 },
          { daemon: 'mirror-command', size: 4 * GiB, writer: 'no writer', readySeconds: 1 },
          { daemon: 'qemu-storage-daemon', size: 4 * GiB, writer: 'no writer', readySeconds: 2 },
        ],
      }),
      'q.json',
    );
    expect(rows.map((r) => [r.benchmark, r.blockmirror, r.peerMedian])).toEqual([
      ['live mirror over QMP, time to ready', 3, 2],
      ['live mirror, blockmirror mirror --export, time to ready', 1, 2],
    ]);
  });

  it('gives a bench:qmp row the CPU ratio of the processes\' CPU-seconds, where the report has them', () => {
    const rows = rowsFromReport(
      qmpReport({
        sizes: [4 * GiB],
        writers: ['unthrottled'],
        results: [
          { daemon: 'blockmirror', size: 4 * GiB, writer: 'unthrottled', readySeconds: 3, cpuSeconds: 6 },
          { daemon: 'qemu-storage-daemon', size: 4 * GiB, writer: 'unthrottled', readySeconds: 2, cpuSeconds: 8 },
        ],
      }),
      'q.json',
    );
    expect(rows.map((r) => r.cpuRatio)).toEqual([0.75]);
  });

  it('leaves out a bench:qmp report whose writer started once the job was ready (not a time to ready under writes)', () => {
    const report = qmpReport({
      sizes: [GiB],
      writers: ['unthrottled'],
      writerAfterReady: true,
      results: [
        { daemon: 'blockmirror', size: GiB, writer: 'unthrottled', readySeconds: 1 },
        { daemon: 'qemu-storage-daemon', size: GiB, writer: 'unthrottled', readySeconds: 2 },
      ],
    });
    expect(rowsFromReport(report, 'q.json')).toEqual([]);
  });

  it('reads a bench:verify report as one row per cache against qemu-img compare, and leaves out state and replication reports', () => {
    const rows = rowsFromReport(
      {
        kind: 'verify',
        date: '2026-12-01T12:00:00Z',
        machine,
        size: 4 * GiB,
        rounds: 5,
        results: [
          { tool: 'blockmirror verify', cache: 'warm', medianSeconds: 2, medianCpu: 3 },
          { tool: 'qemu-img compare', cache: 'warm', medianSeconds: 4, medianCpu: 1 },
        ],
      },
      'v.json',
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ peer: 'qemu-img compare', cache: 'warm', blockmirror: 2, peerMedian: 4, cpuRatio: 3 });
    expect(rows[0]!.command).toBe('npm run bench:verify -- --size 4G --rounds 5 --caches warm --json v.json');
    expect(rowsFromReport({ kind: 'state', results: [] }, 's.json')).toEqual([]);
    expect(rowsFromReport({ kind: 'replication' }, 'r.json')).toEqual([]);
  });

  it('reads bench:qmp and bench:nbd reports, and leaves out reports without a peer', () => {
    const qmp = rowsFromReport(
      {
        kind: 'qmp',
        date: '2026-11-30T10:00:00Z',
        machine,
        size: 4 * GiB,
        runs: 3,
        fioSeconds: 20,
        results: [
          { daemon: 'blockmirror', readySeconds: 10 },
          { daemon: 'qemu-storage-daemon', readySeconds: 20 },
          { daemon: 'blockmirror', readySeconds: 12 },
          { daemon: 'qemu-storage-daemon', readySeconds: 30 },
        ],
      },
      'q.json',
    );
    expect(qmp).toHaveLength(1);
    expect(qmp[0]).toMatchObject({ peer: 'qemu-storage-daemon', blockmirror: 11, peerMedian: 25, cpuRatio: undefined });
    expect(qmp[0]!.command).toBe('npm run bench:qmp -- --size 4G --runs 3 --fio-seconds 20 --json q.json');

    const nbd = rowsFromReport(
      { size: GiB, runs: 2, machine: '2 × EPYC', copy: { 'blockmirror copy': [2, 4], 'nbdcopy --flush': [2, 2] }, serve: {} },
      'bench/results/nbd-2026-11-29.json',
    );
    expect(nbd).toHaveLength(1);
    expect(nbd[0]).toMatchObject({ peer: 'nbdcopy --flush', blockmirror: 3, peerMedian: 2, date: '2026-11-29' });

    expect(rowsFromReport({ kind: 'mirror', results: [] }, 'm.json')).toEqual([]);
    expect(() => rowsFromReport({ kind: 'other' }, 'o.json')).toThrow(/not a benchmark report/);
  });

  it('puts the table after the first paragraph once, and replaces only what is between the markers', () => {
    const doc = '# Performance\n\nFirst paragraph,\non two lines.\n\n## Bulk copy\n\nNotes.\n';
    const once = withReport(doc, 'TABLE 1');
    expect(once).toBe(`# Performance\n\nFirst paragraph,\non two lines.\n\n${START_MARKER}\nTABLE 1\n${END_MARKER}\n\n## Bulk copy\n\nNotes.\n`);
    expect(withReport(once, 'TABLE 2')).toBe(once.replace('TABLE 1', 'TABLE 2'));
    expect(() => withReport(`${START_MARKER}\nx\n`, 'y')).toThrow(/one report marker/);
  });

  it('writes sizes as bench commands take them', () => {
    expect(sizeArgument(GiB)).toBe('1G');
    expect(sizeArgument(64 * 1024)).toBe('64K');
    expect(sizeArgument(1536 * 2 ** 20)).toBe('1536M');
  });
});

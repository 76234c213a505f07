import { cpus, totalmem } from 'node:os';
import type { Bench, Task } from 'tinybench';

/** A group of micro benchmarks that bench/micro.ts can run. */
export interface MicroSuite {
  /** Short name, to pick suites on the command line: `npm run bench -- bitmap`. */
  readonly name: string;
  /** Runs the suite and prints its results. */
  run(): Promise<void>;
}

/** One line of a results table. */
export interface ResultRow {
  readonly operation: string;
  readonly case: string;
  /** Operations one call of the task function performs. */
  readonly batch: number;
  readonly task: Task;
}

/** Where and how the numbers were taken, for the top of a results table. */
export function machineLine(): string {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  return `${cpus().length} cores (${cpu}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
}

function formatTime(ns: number): string {
  if (ns < 1_000) return `${ns.toFixed(1)} ns`;
  if (ns < 1_000_000) return `${(ns / 1_000).toFixed(1)} µs`;
  return `${(ns / 1_000_000).toFixed(2)} ms`;
}

function formatRate(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(1)} M/s`;
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)} k/s`;
  return `${perSecond.toFixed(0)} /s`;
}

/** Prints results as a Markdown table: time per operation (mean and p99 of a call, divided by its batch). */
export function printTable(title: string, rows: readonly ResultRow[]): void {
  const lines = [`### ${title}`, '', '| operation | case | per op (mean) | per op (p99) | ops/s | ±rme | samples |', '| --- | --- | --- | --- | --- | --- | --- |'];
  for (const row of rows) {
    const r = row.task.result;
    if (r.state !== 'completed') {
      lines.push(`| ${row.operation} | ${row.case} | ${r.state} | | | | |`);
      continue;
    }
    const meanNs = (r.latency.mean * 1e6) / row.batch;
    const p99Ns = (r.latency.p99 * 1e6) / row.batch;
    lines.push(
      `| ${row.operation} | ${row.case} | ${formatTime(meanNs)} | ${formatTime(p99Ns)} | ${formatRate(1e9 / meanNs)} | ${r.latency.rme.toFixed(1)} % | ${r.latency.samplesCount} |`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n\n`);
}

/** The task of `bench` named `name`. */
export function taskOf(bench: Bench, name: string): Task {
  const task = bench.getTask(name);
  if (!task) throw new Error(`no task ${name}`);
  return task;
}

#!/usr/bin/env node
/**
 * Entry point of the `blockmirror` command. It sizes libuv's thread pool before anything else
 * runs: the pool is shared by every thread's file I/O and is fixed at its first use.
 */
import { DAEMON_CLIENT_REQUESTS, DEFAULT_BUFFER_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_QUEUE_DEPTH, threadpoolSizeFor } from '../sched/tuning.js';
import { parseSize } from '../util/size.js';

/** The value of the first of `names` on the command line (`--name value` or `--name=value`). */
function optionValue(args: readonly string[], names: readonly string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    for (const name of names) {
      if (arg.startsWith(`${name}=`)) return arg.slice(name.length + 1);
      if (arg === name) return args[i + 1];
    }
  }
  return undefined;
}

/** A size option's value, or `fallback` when it is missing or malformed (the command reports that). */
function sizeValue(args: readonly string[], names: readonly string[], fallback: number): number {
  const text = optionValue(args, names);
  if (text === undefined) return fallback;
  try {
    return parseSize(text) || fallback;
  } catch {
    return fallback;
  }
}

/** Copy operations in flight: `--queue-depth` for a copy; a mirror's buffer over its chunk size. */
function queueDepthFromArgs(args: readonly string[]): number {
  if (args[0] === 'mirror') {
    const buffer = sizeValue(args, ['--buffer-size'], DEFAULT_BUFFER_SIZE);
    const chunk = sizeValue(args, ['--chunk-size', '-c'], DEFAULT_CHUNK_SIZE);
    return Math.max(1, Math.floor(buffer / chunk));
  }
  const depth = optionValue(args, ['--queue-depth', '-q']);
  return depth !== undefined && /^\d+$/.test(depth) ? Number(depth) : DEFAULT_QUEUE_DEPTH;
}

const args = process.argv.slice(2);
// The daemon's pool also serves its NBD clients' requests, next to every job's copies.
const wanted = threadpoolSizeFor(args[0] === 'daemon' ? DEFAULT_QUEUE_DEPTH + DAEMON_CLIENT_REQUESTS : queueDepthFromArgs(args));
const current = Number(process.env.UV_THREADPOOL_SIZE ?? 0);
if (!(current >= wanted)) process.env.UV_THREADPOOL_SIZE = String(wanted);

const { main } = await import('./main.js');
process.exitCode = await main(args);

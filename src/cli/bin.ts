#!/usr/bin/env node
/**
 * Entry point of the `blockmirror` command. It sizes libuv's thread pool before anything else
 * runs: the pool is shared by every thread's file I/O and is fixed at its first use.
 */
import { DAEMON_CLIENT_REQUESTS, DEFAULT_QUEUE_DEPTH, threadpoolSizeFor } from '../sched/tuning.js';

function queueDepthFromArgs(args: readonly string[]): number {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const inline = /^--queue-depth=(\d+)$/.exec(arg);
    if (inline) return Number(inline[1]);
    if ((arg === '--queue-depth' || arg === '-q') && /^\d+$/.test(args[i + 1] ?? '')) return Number(args[i + 1]);
  }
  return DEFAULT_QUEUE_DEPTH;
}

const args = process.argv.slice(2);
// The daemon's pool also serves its NBD clients' requests, next to every job's copies.
const wanted = threadpoolSizeFor(args[0] === 'daemon' ? DEFAULT_QUEUE_DEPTH + DAEMON_CLIENT_REQUESTS : queueDepthFromArgs(args));
const current = Number(process.env.UV_THREADPOOL_SIZE ?? 0);
if (!(current >= wanted)) process.env.UV_THREADPOOL_SIZE = String(wanted);

const { main } = await import('./main.js');
process.exitCode = await main(args);

import type { Command } from 'commander';
import type { JobStateRecord } from '../state/JobStateFile.js';
import { recoverJobState, type RecoveredJobState } from '../state/recoverJobState.js';
import { formatBytes } from '../util/size.js';
import { emitEvent } from './output.js';

/** Options of `blockmirror status`, as commander parses them. */
interface StatusCommandOptions {
  json: boolean;
}

export function registerStatusCommand(program: Command): void {
  program
    .command('status')
    .description('say, from a mirror\'s state directory (mirror --state DIR), which image is current and how much is left to copy, after any crash or while it runs')
    .argument('<dir>', 'the state directory')
    .option('--json', 'one JSON object on stdout', false)
    .action(async (dir: string, opts: StatusCommandOptions) => {
      const recovered = await recoverJobState(dir);
      if (opts.json) emitEvent('status', statusFields(dir, recovered));
      else process.stdout.write(statusText(dir, recovered));
    });
}

function locationName(l: JobStateRecord['source']): string {
  return typeof l === 'string' ? l : JSON.stringify(l);
}

/** The JSON object `status --json` prints. */
export function statusFields(dir: string, r: RecoveredJobState): Record<string, unknown> {
  const { state } = r;
  return {
    dir,
    id: state.id,
    phase: state.phase,
    current: state.current,
    currentImage: locationName(state[state.current]),
    source: state.source,
    target: state.target,
    size: state.size,
    granularity: state.granularity,
    leftBytes: r.leftBytes,
    bitmapBytes: r.bitmapBytes,
    logExtents: r.logExtents,
    logBytes: r.logBytes,
    extentSize: state.extentSize,
    consistent: state.consistent,
    running: r.running,
    pid: state.owner.pid,
    resumable: !r.running && state.phase !== 'pivoted',
    tornTail: r.tornTail,
    updated: state.updated,
  };
}

/** What `status` prints for people. */
export function statusText(dir: string, r: RecoveredJobState): string {
  const { state } = r;
  const lines = [
    `job ${state.id} (${dir}): ${state.phase}${r.running ? `, running as process ${state.owner.pid}` : ''}`,
    `current image: ${state.current}, ${locationName(state[state.current])}`,
    `source ${locationName(state.source)}, target ${locationName(state.target)}, ${formatBytes(state.size)}`,
  ];
  if (state.phase === 'pivoted') {
    lines.push('the job pivoted: the target holds every write; there is nothing to resume');
  } else {
    lines.push(
      `left to copy: ${formatBytes(r.leftBytes)} (bitmap ${formatBytes(r.bitmapBytes)}, activity log ${r.logExtents} extents of ${formatBytes(state.extentSize)})${r.running ? ', as of the last checkpoint' : ''}`,
    );
    if (r.tornTail) lines.push('the activity log\'s last record was cut short (power lost during an append): it was not used, since no write waiting on it was let through');
    if (state.phase === 'stopped') lines.push(state.consistent ? 'it was cancelled in sync: the target is a consistent copy as of then' : 'it stopped before it was in sync: the target is not a consistent copy');
    if (!r.running) lines.push(`resume with: blockmirror mirror --resume ${dir}`);
  }
  lines.push(`last update ${state.updated}`);
  return `${lines.join('\n')}\n`;
}

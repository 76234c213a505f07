import type { MirrorJob, MirrorProgress } from '../job/MirrorJob.js';
import { formatBytes } from '../util/size.js';
import { emitEvent, finiteOrNull } from './output.js';
import { FieldPriority, type BarField, type ProgressBar } from './ProgressBar.js';

/** Progress is shown this often while data moves... */
const BUSY_INTERVAL_MS = 100;
/** ...and this often while the job sits in sync with nothing to copy. */
const IDLE_INTERVAL_MS = 1000;

/** A mirror job's progress as a `progress` NDJSON event carries it: the job's status and its progress fields. */
export function progressFields(job: MirrorJob, p: MirrorProgress = job.progress()): Record<string, unknown> {
  return {
    status: job.status,
    ...p,
    copyRate: Math.round(p.copyRate),
    dirtyRate: Math.round(p.dirtyRate),
    etaToReady: finiteOrNull(p.etaToReady),
  };
}

/**
 * The fields a mirror adds to its progress bar (which shows the copy rate already): phase, dirty
 * bytes, dirty rate, each with its priority for a narrow terminal.
 */
export function mirrorBarFields(status: string, p: Pick<MirrorProgress, 'dirtyBytes' | 'dirtyRate'>): BarField[] {
  return [
    { text: status, priority: FieldPriority.PHASE },
    { text: `dirty ${formatBytes(p.dirtyBytes)}`, priority: FieldPriority.DIRTY },
    { text: `dirtied ${formatBytes(p.dirtyRate)}/s`, priority: FieldPriority.DIRTY_RATE },
  ];
}

/**
 * Shows a mirror job's progress until stopped: `progress` NDJSON events (with `json`) and/or a
 * progress bar, 10 times a second while data moves and once a second while the job is idle in sync.
 */
export function showMirrorProgress(job: MirrorJob, out: { readonly json: boolean; readonly bar: ProgressBar | undefined }): { stop(): void } {
  if (!out.json && !out.bar) return { stop: () => {} };
  let last = 0;
  const tick = (): void => {
    const p = job.progress();
    const now = performance.now();
    if (p.synced && now - last < IDLE_INTERVAL_MS) return;
    last = now;
    if (out.json) emitEvent('progress', progressFields(job, p));
    out.bar?.update({ done: p.offset, total: p.len, rate: p.copyRate, etaSeconds: p.etaToReady, fields: mirrorBarFields(job.status, p) });
  };
  const timer = setInterval(tick, BUSY_INTERVAL_MS);
  return {
    stop: () => {
      clearInterval(timer);
      out.bar?.stop();
    },
  };
}

import { ErrorCode, JobError } from '../errors.js';
import { JobStatus } from './JobStatus.js';
import type { JobOutcome, MirrorJob } from './MirrorJob.js';

function assertDistinct(jobs: readonly MirrorJob[]): void {
  if (new Set(jobs).size !== jobs.length) throw new JobError(ErrorCode.JOB_STATE, 'the same job is listed twice');
}

/**
 * Completes several jobs at one point in time: every job's writers are quiesced together before
 * any job drains, so the targets hold the sources as of one instant, and every write after it goes
 * to the targets. All jobs must be ready; none is touched otherwise.
 */
export async function completeAll(jobs: readonly MirrorJob[]): Promise<JobOutcome[]> {
  assertDistinct(jobs);
  const notReady = jobs.filter((j) => j.status !== JobStatus.READY);
  if (notReady.length) {
    throw new JobError(ErrorCode.JOB_STATE, `cannot complete together: ${notReady.map((j) => `${j.id} is ${j.status}`).join(', ')}`);
  }
  await Promise.all(jobs.map((j) => j.quiesce()));
  try {
    return await Promise.all(jobs.map((j) => j.complete()));
  } finally {
    for (const j of jobs) j.unquiesce();
  }
}

/**
 * Cancels several jobs at one point in time. Jobs that are ready end with targets consistent as
 * of the same instant (their writers are quiesced together first); the others stop at once.
 */
export async function cancelAll(jobs: readonly MirrorJob[], options: { force?: boolean } = {}): Promise<JobOutcome[]> {
  assertDistinct(jobs);
  const inSync = jobs.filter((j) => j.status === JobStatus.READY || j.status === JobStatus.STANDBY);
  const held = options.force ? [] : inSync;
  await Promise.all(held.map((j) => j.quiesce()));
  try {
    return await Promise.all(jobs.map((j) => j.cancel(options)));
  } finally {
    for (const j of held) j.unquiesce();
  }
}

/**
 * Brings several jobs to one consistent point: every job's writers are quiesced together, then
 * each copies what is left and flushes its target (unless `flush` is false: `atPoint` makes the
 * targets durable itself), then `atPoint` runs (a replication checkpoint on the secondaries),
 * then the writers go again. Every target then holds its source as of one
 * instant. Rejects (writers released) if a target does not take its backlog within `timeoutMs`.
 */
export async function atConsistentPoint<T>(jobs: readonly MirrorJob[], atPoint: () => Promise<T>, timeoutMs: number, options: { flush?: boolean } = {}): Promise<T> {
  assertDistinct(jobs);
  await Promise.all(jobs.map((j) => j.quiesce()));
  try {
    await Promise.all(jobs.map((j) => j.drainQuiesced(timeoutMs, options)));
    return await atPoint();
  } finally {
    for (const j of jobs) j.unquiesce();
  }
}

import type { BlockDevice, DeviceSpec } from '../io/BlockDevice.js';
import { planConnections, type ConnectionPlan } from '../job/connectionPlan.js';
import type { TaskRunner } from '../sched/CopyScheduler.js';
import { TASKS_PER_WORKER } from '../sched/tuning.js';
import type { CopyTask, CopyTaskResult } from './CopyTask.js';
import { WorkerPool } from './WorkerPool.js';
import type { EagerCopyPool } from './EagerCopyPool.js';
import { InlineCopyRunner } from './InlineCopyRunner.js';

/** Runs copy tasks and is closed when the copy ends. */
export interface CopyRunner extends TaskRunner {
  close(): Promise<void>;
  /** Resolves once its worker threads are up, where it starts them while running tasks itself (EagerCopyPool). */
  readonly up?: Promise<void>;
}

/**
 * The runner a copy between two open devices should use: the worker pool for files, or the
 * coordinator's own devices when an NBD export is involved (see connectionPlan.ts) or when asked
 * for no workers (`workers` 0). `pool`: a worker pool the caller started already (copyImage's
 * {@link EagerCopyPool}), used instead of a new one.
 */
export function createCopyRunner(
  source: BlockDevice,
  target: BlockDevice,
  sourceSpec: DeviceSpec,
  { workers, tasksPerWorker = TASKS_PER_WORKER, pool }: { workers: number; tasksPerWorker?: number; pool?: CopyRunner },
): { runner: CopyRunner; plan: ConnectionPlan } {
  const plan: ConnectionPlan = workers === 0 ? { inline: true, note: 'copied by the coordinator thread (no worker threads asked for)' } : planConnections(source, target);
  // A pool started for files the devices turned out not to be (an NBD export behind a file spec) is not used.
  if (plan.inline) void pool?.close().catch(() => undefined);
  const runner = plan.inline
    ? new InlineCopyRunner(source, target, sourceSpec.kind === 'file' && sourceSpec.direct === true)
    : (pool ?? new WorkerPool<CopyTask, CopyTaskResult>('workers/copyWorker.js', { workers, tasksPerWorker }));
  return { runner, plan };
}


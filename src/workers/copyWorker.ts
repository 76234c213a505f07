/**
 * The worker side of the copy pool (a piscina worker module). Each worker thread keeps its own
 * open devices and reusable buffers, and copies the extents of a task concurrently
 * ({@link ExtentCopier}).
 */
import type { BlockDevice } from '../io/BlockDevice.js';
import type { CopyTask, CopyTaskResult } from './CopyTask.js';
import { ExtentCopier } from './ExtentCopier.js';
import { deviceFor } from './workerDevices.js';

/** One copier per (source, target) pair: its buffers are aligned for whichever of the two needs it. */
const copiers = new Map<string, ExtentCopier>();

function copierFor(task: CopyTask, source: BlockDevice, target: BlockDevice): ExtentCopier {
  const key = JSON.stringify([task.source, task.target]);
  let copier = copiers.get(key);
  if (!copier) {
    copier = new ExtentCopier(source, target, task.source.kind === 'file' && task.source.direct === true);
    copiers.set(key, copier);
  }
  return copier;
}

export default async function copyExtents(task: CopyTask): Promise<CopyTaskResult> {
  const [source, target] = await Promise.all([deviceFor(task.source), deviceFor(task.target)]);
  return copierFor(task, source, target).copy(task);
}

/**
 * The worker side of the copy pool (a piscina worker module). Each worker thread keeps its own
 * open devices and reusable buffers, and copies the extents of a task concurrently
 * ({@link ExtentCopier}, through a {@link SpecCopier}).
 */
import type { CopyTask, CopyTaskResult } from './CopyTask.js';
import { SpecCopier } from './SpecCopier.js';
import { DeviceSet } from './DeviceSet.js';

const copier = new SpecCopier(new DeviceSet());

export default function copyExtents(task: CopyTask): Promise<CopyTaskResult> {
  return copier.copy(task);
}

/**
 * The worker side of the verify pool (a piscina worker module). Each worker thread keeps its own
 * open devices and reusable buffers, and compares the extents of a task ({@link ExtentComparer}).
 */
import { ExtentComparer } from './ExtentComparer.js';
import type { VerifyTask, VerifyTaskResult } from './VerifyTask.js';
import { DeviceSet } from './DeviceSet.js';

/** This worker's open devices, kept for its life. */
const devices = new DeviceSet();
/** One comparer per (source, target) pair, with its buffers. */
const comparers = new Map<string, ExtentComparer>();

export default async function compareExtents(task: VerifyTask): Promise<VerifyTaskResult> {
  const [source, target] = await Promise.all([devices.get(task.source), devices.get(task.target)]);
  const key = JSON.stringify([task.source, task.target]);
  let comparer = comparers.get(key);
  if (!comparer) {
    comparer = new ExtentComparer(source, target);
    comparers.set(key, comparer);
  }
  return comparer.compare(task);
}

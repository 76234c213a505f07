import type { CopyTask, CopyTaskResult } from './CopyTask.js';
import { ExtentCopier } from './ExtentCopier.js';
import type { DeviceSet } from './DeviceSet.js';

/**
 * Copies tasks between the devices their specs name, opened from `devices` on this thread: one
 * {@link ExtentCopier} per (source, target) pair, its buffers aligned for whichever of the two
 * needs it. A copy worker has one; so has the coordinator while the workers boot.
 */
export class SpecCopier {
  readonly #devices: DeviceSet;
  readonly #copiers = new Map<string, ExtentCopier>();

  constructor(devices: DeviceSet) {
    this.#devices = devices;
  }

  async copy(task: CopyTask): Promise<CopyTaskResult> {
    const [source, target] = await Promise.all([this.#devices.get(task.source), this.#devices.get(task.target)]);
    const key = JSON.stringify([task.source, task.target]);
    let copier = this.#copiers.get(key);
    if (!copier) {
      copier = new ExtentCopier(source, target, task.source.kind === 'file' && task.source.direct === true);
      this.#copiers.set(key, copier);
    }
    return copier.copy(task);
  }
}

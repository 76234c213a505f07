import type { DeviceSpec } from '../io/BlockDevice.js';
import type { CopyTask, CopyTaskResult } from './CopyTask.js';
import { SpecCopier } from './SpecCopier.js';
import { DeviceSet } from './DeviceSet.js';
import { WorkerPool, type WorkerPoolOptions } from './WorkerPool.js';

/**
 * A pool of copy workers that starts copying before its threads are up. A worker takes about
 * 80 ms of CPU to boot (Node's own modules, then ours), while the coordinator, having opened the
 * devices, would sit idle; so until the pool has answered a first empty task, tasks run on the
 * coordinator itself, on devices it opens from the tasks' specs (as a worker would) and closes
 * with the pool. Files only: an NBD export must not be opened again (see job/connectionPlan.ts).
 */
export class EagerCopyPool {
  readonly #pool: WorkerPool<CopyTask, CopyTaskResult>;
  readonly #devices = new DeviceSet();
  readonly #local = new SpecCopier(this.#devices);
  #up = false;
  /** Tasks the coordinator ran itself. */
  localTasks = 0;
  /** Resolves once the workers are up: from then on every task runs on them. */
  readonly up: Promise<void>;

  /** `ping`: the specs of an empty first task, whose answer says the workers are up. */
  constructor(options: WorkerPoolOptions, ping: { source: DeviceSpec; target: DeviceSpec }) {
    this.#pool = new WorkerPool('workers/copyWorker.js', options);
    const empty: CopyTask = { ...ping, extents: [], detectZeroes: false, targetIsZero: false };
    // A worker that cannot start fails the copy's own tasks, with its reason.
    this.up = this.#pool.run(empty).then(
      () => void (this.#up = true),
      () => void (this.#up = true),
    );
  }

  run(task: CopyTask): Promise<CopyTaskResult> {
    if (this.#up) return this.#pool.run(task);
    this.localTasks++;
    return this.#local.copy(task);
  }

  async close(): Promise<void> {
    await Promise.all([this.#pool.close(), this.#devices.close()]);
  }
}

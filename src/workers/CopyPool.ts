import { Piscina } from 'piscina';
import { builtModulePath } from '../util/builtModule.js';
import type { CopyTask, CopyTaskResult } from './CopyTask.js';

/** How the copy pool is sized. */
export interface CopyPoolOptions {
  /** Worker threads. */
  readonly workers: number;
  /** Tasks one worker runs at once: more than one keeps a worker busy while a task's tail drains. */
  readonly tasksPerWorker: number;
}

/**
 * The coordinator's side of the piscina pool of copy workers. A fixed number of threads, started
 * at once, so the first batches do not wait for a thread to boot.
 */
export class CopyPool {
  readonly #pool: Piscina<CopyTask, CopyTaskResult>;

  constructor(options: CopyPoolOptions) {
    this.#pool = new Piscina({
      filename: builtModulePath('workers/copyWorker.js'),
      minThreads: options.workers,
      maxThreads: options.workers,
      concurrentTasksPerWorker: options.tasksPerWorker,
      // Workers keep file handles open between tasks, so they must not block in Atomics.wait.
      atomics: 'disabled',
      idleTimeout: Number.POSITIVE_INFINITY,
      // piscina loads a worker module with require() first; Node 20's require(esm) can abort the
      // process (V8 "IsGraphAsync ... instantiated module", a known race in Node's loader), so
      // workers get import() only.
      execArgv: process.allowedNodeEnvironmentFlags.has('--experimental-require-module')
        ? [...process.execArgv, '--no-experimental-require-module']
        : process.execArgv,
    });
  }

  /** Copies a batch of extents on some worker. Rejects only if the worker itself fails. */
  run(task: CopyTask): Promise<CopyTaskResult> {
    return this.#pool.run(task);
  }

  /** Stops the workers; their handles close with them. */
  async close(): Promise<void> {
    await this.#pool.destroy();
  }
}

import { Piscina } from 'piscina';
import { builtModulePath } from '../util/builtModule.js';

/** How a pool is sized. */
export interface WorkerPoolOptions {
  /** Worker threads. */
  readonly workers: number;
  /** Tasks one worker runs at once: more than one keeps a worker busy while a task's tail drains. */
  readonly tasksPerWorker: number;
}

/**
 * The coordinator's side of a piscina pool of workers that run `module` (a built worker module:
 * workers/copyWorker.js copies, workers/verifyWorker.js compares). A fixed number of threads,
 * started at once, so the first batches do not wait for a thread to boot; each keeps its own
 * open devices between tasks.
 */
export class WorkerPool<Task, Result> {
  readonly #pool: Piscina<Task, Result>;

  constructor(module: string, options: WorkerPoolOptions) {
    this.#pool = new Piscina({
      filename: builtModulePath(module),
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

  /** Runs a task on some worker. Rejects only if the worker itself fails. */
  run(task: Task): Promise<Result> {
    return this.#pool.run(task);
  }

  /** Stops the workers; their handles close with them. */
  async close(): Promise<void> {
    await this.#pool.destroy();
  }
}

import type { BlockDevice } from '../io/BlockDevice.js';
import type { CopyTask, CopyTaskResult } from './CopyTask.js';
import { ExtentCopier } from './ExtentCopier.js';

/**
 * Runs copy tasks on the calling thread, with devices the caller has open: the stand-in for the
 * worker pool when a device must not be opened again from other threads (an NBD export whose
 * server takes one connection, or only promises that a flush covers its own connection's
 * writes). The tasks' device specs are ignored: every task copies between the two given devices.
 * The I/O itself is still asynchronous (sockets, libuv's thread pool), so tasks overlap.
 */
export class InlineCopyRunner {
  readonly #copier: ExtentCopier;

  constructor(source: BlockDevice, target: BlockDevice, alignForSource: boolean) {
    this.#copier = new ExtentCopier(source, target, alignForSource);
  }

  run(task: CopyTask): Promise<CopyTaskResult> {
    return this.#copier.copy(task);
  }

  /** Nothing to stop: the devices belong to the caller. */
  async close(): Promise<void> {}
}

/**
 * Group commit: items handed in while a batch is being committed wait together for the next one,
 * so a burst of writers shares one sync. One batch is committed at a time, in order.
 */
export class GroupCommit<T> {
  readonly #commit: (batch: T[]) => Promise<void>;
  #pending: T[] = [];
  #done: { promise: Promise<void>; resolve(): void; reject(err: unknown): void } | undefined;
  #running: Promise<void> | undefined;

  /** `commit` makes one batch durable; what it throws rejects every item of that batch. */
  constructor(commit: (batch: T[]) => Promise<void>) {
    this.#commit = commit;
  }

  /**
   * Adds `item` to the next batch; resolves once that batch is committed. Items of one batch get
   * the same promise.
   */
  add(item: T): Promise<void> {
    this.#pending.push(item);
    if (!this.#done) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      promise.catch(() => {}); // a failed batch is reported to the items that wait on it, not as unhandled
      this.#done = { promise, resolve, reject };
    }
    const done = this.#done.promise;
    this.#running ??= this.#loop();
    return done;
  }

  /** Resolves once no batch is being committed or waiting. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #loop(): Promise<void> {
    while (this.#pending.length > 0) {
      const batch = this.#pending;
      const done = this.#done!;
      this.#pending = [];
      this.#done = undefined;
      try {
        await this.#commit(batch);
        done.resolve();
      } catch (err) {
        done.reject(err);
      }
    }
    this.#running = undefined;
  }
}

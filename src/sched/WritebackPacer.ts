/**
 * Pushes the target's dirty pages to disk while the copy runs, so the final flush is short.
 * nbdcopy starts write-back early with sync_file_range; Node has no such call, so this keeps one
 * flush (fdatasync) in flight on its own lane whenever `everyBytes` more have been written since
 * the last one started. Measured against O_DIRECT in docs/perf.md.
 */
export class WritebackPacer {
  readonly #flush: () => Promise<void>;
  readonly #everyBytes: number;
  #sinceFlush = 0;
  #inFlight: Promise<void> | undefined;
  #error: unknown;
  #flushes = 0;

  /** `everyBytes` 0 turns pacing off: only the final flush runs. */
  constructor(flush: () => Promise<void>, everyBytes: number) {
    this.#flush = flush;
    this.#everyBytes = everyBytes;
  }

  /** Flushes started so far. */
  get flushes(): number {
    return this.#flushes;
  }

  /** The error of a paced flush that failed, if one did. */
  get error(): unknown {
    return this.#error;
  }

  /** Records bytes the copy wrote; starts a flush when enough have piled up and none is running. */
  noteWritten(bytes: number): void {
    this.#sinceFlush += bytes;
    if (this.#everyBytes === 0 || this.#inFlight || this.#sinceFlush < this.#everyBytes) return;
    this.#sinceFlush = 0;
    this.#flushes++;
    this.#inFlight = this.#flush().then(
      () => {
        this.#inFlight = undefined;
      },
      (err: unknown) => {
        this.#inFlight = undefined;
        this.#error ??= err;
      },
    );
  }

  /** Waits for a paced flush still running; throws if any paced flush failed. */
  async settle(): Promise<void> {
    await this.#inFlight;
    if (this.#error !== undefined) throw this.#error;
  }
}

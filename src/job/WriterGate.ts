import { waitForChange } from '../util/atomicsWait.js';

/** A waiting writer re-checks at least this often. */
const WAIT_SLICE_MS = 1000;

/** Word indexes in the gate's shared memory. */
const GATE = 0;
const ACTIVE = 1;
const PIVOTED = 2;
const TRACKING = 3;
const THROTTLE = 4;
const WORDS = 5;
/** A throttled write waits at most this long (µs). */
export const MAX_THROTTLE_MICROS = 200_000;

/** The gate's shared memory, as posted to writer threads. */
export interface SharedGate {
  readonly buffer: SharedArrayBuffer;
}

/**
 * Lets the coordinator quiesce writers on any thread: writers `enter` before a write and `exit`
 * after it (and after marking the bitmap); the coordinator `close`s the gate and waits until no
 * writer is inside, then `open`s it again. Also carries two flags writers read on entry: whether
 * the job has pivoted (writes go to the target) and whether writes still need tracking.
 *
 * A writer raises the active count before it looks at the gate, and the coordinator closes the
 * gate before it reads the count (both sequentially consistent), so neither can miss the other.
 */
export class WriterGate {
  readonly #words: Int32Array;

  private constructor(buffer: SharedArrayBuffer) {
    this.#words = new Int32Array(buffer);
  }

  static create(): WriterGate {
    const gate = new WriterGate(new SharedArrayBuffer(WORDS * 4));
    Atomics.store(gate.#words, TRACKING, 1);
    return gate;
  }

  static fromShared(shared: SharedGate): WriterGate {
    return new WriterGate(shared.buffer);
  }

  share(): SharedGate {
    return { buffer: this.#words.buffer as SharedArrayBuffer };
  }

  /** Writes go to the target from now on. */
  get pivoted(): boolean {
    return Atomics.load(this.#words, PIVOTED) === 1;
  }

  /** False once the job has ended: writes need no marking any more. */
  get tracking(): boolean {
    return Atomics.load(this.#words, TRACKING) === 1;
  }

  /** Writers currently inside. */
  get active(): number {
    return Atomics.load(this.#words, ACTIVE);
  }

  /** Waits until the gate is open and counts the caller in. */
  async enter(): Promise<void> {
    for (;;) {
      Atomics.add(this.#words, ACTIVE, 1);
      if (Atomics.load(this.#words, GATE) === 0) return;
      this.exit();
      await waitForChange(this.#words, GATE, 1, WAIT_SLICE_MS);
    }
  }

  exit(): void {
    if (Atomics.sub(this.#words, ACTIVE, 1) === 1) Atomics.notify(this.#words, ACTIVE);
  }

  /** Closes the gate and resolves once no writer is inside. */
  async close(): Promise<void> {
    Atomics.store(this.#words, GATE, 1);
    for (let n = this.active; n !== 0; n = this.active) await waitForChange(this.#words, ACTIVE, n, WAIT_SLICE_MS);
  }

  open(): void {
    Atomics.store(this.#words, GATE, 0);
    Atomics.notify(this.#words, GATE);
  }

  /** Sends writes to the target from now on (the gate should be closed). */
  pivot(): void {
    Atomics.store(this.#words, PIVOTED, 1);
  }

  /** The job has ended: writers stop marking. */
  stopTracking(): void {
    Atomics.store(this.#words, TRACKING, 0);
    this.setThrottle(0);
  }

  /** Microseconds each tracked write waits before it is acknowledged (0: none): the auto-converge throttle. */
  get throttle(): number {
    return Atomics.load(this.#words, THROTTLE);
  }

  setThrottle(micros: number): void {
    Atomics.store(this.#words, THROTTLE, Math.max(0, Math.min(MAX_THROTTLE_MICROS, Math.round(micros))));
  }

  /**
   * Delays a writer, on whatever thread it runs, by the current throttle before its write is
   * acknowledged. A delay per write caps every writer's rate, however it paces itself; the job
   * raises it until the copier outpaces the writers (QEMU's auto-converge throttles vCPUs instead).
   */
  async throttleWrite(): Promise<void> {
    const micros = this.throttle;
    if (micros === 0) return;
    await new Promise((resolve) => setTimeout(resolve, micros / 1000));
  }
}

import { IoError } from '../errors.js';
import type { BlockDevice, DeviceSpec } from './BlockDevice.js';
import { DeviceWrapper } from './DeviceWrapper.js';

/** Operations a fault plan can fail. */
export type FaultOperation = 'read' | 'write' | 'flush';
/** Errors a fault plan can inject. */
export type FaultErrno = 'EIO' | 'ENOSPC';

const OPS: readonly FaultOperation[] = ['read', 'write', 'flush'];
const ERRNOS: readonly FaultErrno[] = ['EIO', 'ENOSPC'];
/** Int32 words per operation: errno (0 none, else index+1 in ERRNOS), failures left (-1: all), failures so far. */
const INTS_PER_OP = 3;
/** Float64 words per operation: range start and end. */
const FLOATS_PER_OP = 2;
const INT_BYTES = OPS.length * INTS_PER_OP * 4;
const FLOAT_OFFSET = Math.ceil(INT_BYTES / 8) * 8;

/** A device wrapped by a fault plan: for tests of error handling (spec kind `faulty`). */
export interface FaultyDeviceSpec {
  readonly kind: 'faulty';
  readonly inner: DeviceSpec;
  /** The plan's shared memory, so every thread's copy of the device follows the same plan. */
  readonly plan: SharedArrayBuffer;
}

/**
 * Which operations of a {@link FaultyDevice} fail, and how: set from a test on one thread,
 * obeyed by the device's copies on every thread (the plan lives in shared memory).
 */
export class FaultPlan {
  readonly #ints: Int32Array;
  readonly #floats: Float64Array;

  constructor(buffer = new SharedArrayBuffer(FLOAT_OFFSET + OPS.length * FLOATS_PER_OP * 8)) {
    this.#ints = new Int32Array(buffer, 0, OPS.length * INTS_PER_OP);
    this.#floats = new Float64Array(buffer, FLOAT_OFFSET, OPS.length * FLOATS_PER_OP);
  }

  get buffer(): SharedArrayBuffer {
    return this.#ints.buffer as SharedArrayBuffer;
  }

  /** A spec for `inner` wrapped by this plan. */
  wrap(inner: DeviceSpec): FaultyDeviceSpec {
    return { kind: 'faulty', inner, plan: this.buffer };
  }

  /**
   * Fails the next `count` (default: every) `operation`s that touch [from, to) with `errno`.
   */
  fail(operation: FaultOperation, errno: FaultErrno, options: { count?: number; from?: number; to?: number } = {}): void {
    const i = OPS.indexOf(operation);
    this.#floats[i * FLOATS_PER_OP] = options.from ?? 0;
    this.#floats[i * FLOATS_PER_OP + 1] = options.to ?? Number.MAX_SAFE_INTEGER;
    Atomics.store(this.#ints, i * INTS_PER_OP + 1, options.count ?? -1);
    Atomics.store(this.#ints, i * INTS_PER_OP, ERRNOS.indexOf(errno) + 1);
  }

  /** Stops injecting faults. */
  heal(): void {
    for (let i = 0; i < OPS.length; i++) Atomics.store(this.#ints, i * INTS_PER_OP, 0);
  }

  /** How many `operation`s have been failed so far. */
  failures(operation: FaultOperation): number {
    return Atomics.load(this.#ints, OPS.indexOf(operation) * INTS_PER_OP + 2);
  }

  /** The errno to fail this operation with, or undefined to let it through. */
  check(operation: FaultOperation, offset: number, length: number): FaultErrno | undefined {
    const i = OPS.indexOf(operation);
    const code = Atomics.load(this.#ints, i * INTS_PER_OP);
    if (code === 0) return undefined;
    const from = this.#floats[i * FLOATS_PER_OP]!;
    const to = this.#floats[i * FLOATS_PER_OP + 1]!;
    if (operation !== 'flush' && (offset >= to || offset + length <= from)) return undefined;
    const left = i * INTS_PER_OP + 1;
    for (;;) {
      const n = Atomics.load(this.#ints, left);
      if (n === 0) return undefined;
      if (n < 0 || Atomics.compareExchange(this.#ints, left, n, n - 1) === n) break;
    }
    Atomics.add(this.#ints, i * INTS_PER_OP + 2, 1);
    return ERRNOS[code - 1];
  }
}

/** A device whose operations fail as a {@link FaultPlan} says; otherwise it is the device it wraps. */
export class FaultyDevice extends DeviceWrapper {
  readonly #plan: FaultPlan;

  constructor(inner: BlockDevice, plan: FaultPlan) {
    super(inner);
    this.#plan = plan;
  }

  #maybeFail(operation: FaultOperation, offset: number, length: number): void {
    const errno = this.#plan.check(operation, offset, length);
    if (errno) {
      throw new IoError(errno, operation, `${operation} failed on ${this.description} at offset ${offset}: injected ${errno}`, { offset, length });
    }
  }

  override async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#maybeFail('read', offset, buf.length);
    return super.read(buf, offset);
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    this.#maybeFail('write', offset, data.length);
    return super.write(data, offset);
  }
  override async writeZeroes(offset: number, length: number): Promise<void> {
    this.#maybeFail('write', offset, length);
    return super.writeZeroes(offset, length);
  }
  override async flush(): Promise<void> {
    this.#maybeFail('flush', 0, 0);
    return super.flush();
  }
}

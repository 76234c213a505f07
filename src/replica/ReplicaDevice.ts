import type { AllocationExtent, BlockDevice } from '../io/BlockDevice.js';
import type { CheckpointBuffer } from './CheckpointBuffer.js';

/** Something else that must see the disk's old contents before a write changes them (a failover drill's snapshot). */
export interface DiskWriteObserver {
  /** Resolves once [offset, offset + length) of the disk may be overwritten. */
  beforeDiskWrite(offset: number, length: number): Promise<void>;
}

/** What the device does with writes: copy-before-write into the buffer, or straight through (after a failover). */
export type ReplicaDeviceMode = 'replicating' | 'pass-through';

/** Counts of the writes since the last checkpoint (by this process). */
export interface ReplicaWriteCounts {
  /** Write, write-zeroes and discard requests. */
  readonly writes: number;
  /** Bytes they covered. */
  readonly bytes: number;
}

/**
 * The replica disk as the primary's writes reach it (the NBD export serves this): reads pass
 * through; a write, write-zeroes or discard first has the checkpoint buffer save the old
 * contents of the granules it touches (and a drill's snapshot, while one runs), then goes to the
 * disk. After a failover it passes everything through.
 *
 * {@link exclusive} holds new writes and waits for those in flight: checkpoints, restores and
 * drill starts run with no write between the buffer's save and the disk.
 */
export class ReplicaDevice implements BlockDevice {
  readonly description: string;
  readonly readOnly = false;
  readonly blockSize = 1;
  readonly maxRequest: number;
  readonly efficientZeroes: boolean;
  readonly blockStatus?: (offset: number, length: number) => Promise<readonly AllocationExtent[]>;
  readonly #disk: BlockDevice;
  /** Undefined once failed over: nothing is saved any more. */
  #buffer: CheckpointBuffer | undefined;
  #observer: DiskWriteObserver | undefined;
  #inFlight = 0;
  #drained: Array<() => void> = [];
  /** Set while an exclusive section runs: writes wait for it. */
  #held: Promise<void> | undefined;
  #writes = 0;
  #bytes = 0;

  /** Over `disk`, saving into `buffer`; with no buffer (a replica that failed over), passing through. */
  constructor(disk: BlockDevice, buffer: CheckpointBuffer | undefined) {
    this.description = `replica of ${disk.description}`;
    this.maxRequest = disk.maxRequest;
    this.efficientZeroes = disk.efficientZeroes;
    this.#disk = disk;
    this.#buffer = buffer;
    // A hole is a hole to the primary too: the disk's allocation is what the export serves.
    if (disk.blockStatus) this.blockStatus = (offset, length) => disk.blockStatus!(offset, length);
  }

  get size(): number {
    return this.#disk.size;
  }

  get mode(): ReplicaDeviceMode {
    return this.#buffer ? 'replicating' : 'pass-through';
  }

  /** Writes since the last {@link resetCounts}. */
  get counts(): ReplicaWriteCounts {
    return { writes: this.#writes, bytes: this.#bytes };
  }

  /** Starts counting again (a new checkpoint interval). */
  resetCounts(): void {
    this.#writes = 0;
    this.#bytes = 0;
  }

  /** From now on writes go straight to the disk, with no copy-before-write (the replica failed over). */
  passThrough(): void {
    this.#buffer = undefined;
  }

  /**
   * Sets (or, with undefined, clears) the observer every later write waits for before it reaches
   * the disk. Call inside {@link exclusive}, so that no write in flight missed it.
   */
  setObserver(observer: DiskWriteObserver | undefined): void {
    this.#observer = observer;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.#disk.read(buf, offset);
  }

  write(data: Uint8Array, offset: number): Promise<void> {
    return this.#mutate(offset, data.length, () => this.#disk.write(data, offset));
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#mutate(offset, length, () => this.#disk.writeZeroes(offset, length));
  }

  /** A discard may leave zeros, so it is saved before like a write. */
  discard(offset: number, length: number): Promise<void> {
    return this.#mutate(offset, length, () => this.#disk.discard(offset, length));
  }

  flush(): Promise<void> {
    return this.#disk.flush();
  }

  allocBuffer(size: number): Promise<Buffer> {
    return this.#disk.allocBuffer(size);
  }

  /** Does not close the disk or the buffer: they belong to the replica. */
  async close(): Promise<void> {}

  /**
   * Runs `body` with writes held: new ones wait, and `body` starts once those in flight are done
   * (reads go on). One exclusive section at a time.
   */
  async exclusive<T>(body: () => Promise<T>): Promise<T> {
    while (this.#held) await this.#held;
    let release!: () => void;
    this.#held = new Promise<void>((resolve) => (release = resolve));
    try {
      while (this.#inFlight > 0) await new Promise<void>((resolve) => this.#drained.push(resolve));
      return await body();
    } finally {
      this.#held = undefined;
      release();
    }
  }

  async #mutate(offset: number, length: number, op: () => Promise<void>): Promise<void> {
    while (this.#held) await this.#held;
    this.#inFlight++;
    try {
      this.#writes++;
      this.#bytes += length;
      // Mode and observer are read after the gate: a write held by a failover passes through.
      const saves: Promise<void>[] = [];
      if (this.#buffer) saves.push(this.#buffer.preserve(offset, length));
      if (this.#observer) saves.push(this.#observer.beforeDiskWrite(offset, length));
      if (saves.length === 1) await saves[0];
      else if (saves.length > 1) await Promise.all(saves);
      await op();
    } finally {
      if (--this.#inFlight === 0) {
        const waiters = this.#drained;
        this.#drained = [];
        for (const w of waiters) w();
      }
    }
  }
}

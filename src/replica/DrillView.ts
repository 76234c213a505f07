import { open, unlink } from 'node:fs/promises';
import { toIoError } from '../errors.js';
import type { BlockDevice } from '../io/BlockDevice.js';
import { FileDevice } from '../io/FileDevice.js';
import { GranuleSet } from './GranuleSet.js';
import type { DiskWriteObserver } from './ReplicaDevice.js';

/** Zeros are written from one shared buffer of at most this size. */
const ZERO_CHUNK = 1 << 20;

/** Where a drill keeps its two scratch files. */
export interface DrillFiles {
  /** Old contents of the disk, saved before replication overwrites them (the snapshot). */
  readonly snapshotPath: string;
  /** The drill's own writes, a granule at a time (the overlay). */
  readonly overlayPath: string;
}

/**
 * A failover drill: a read-write view of the replica disk as it was when the drill started,
 * while replication goes on writing the disk underneath. Two sparse scratch files of the disk's
 * size, thrown away by {@link close}:
 *
 * - the snapshot: before a replication write changes a granule for the first time since the
 *   drill started ({@link beforeDiskWrite}), the granule is copied there; the view reads it from
 *   there from then on. A view read of the disk that started before that copy finished holds the
 *   write back until it is done, so the view never sees a newer byte.
 * - the overlay: the drill's first write to a granule copies the granule from the view below
 *   (snapshot or disk) into the overlay, then every write of the drill lands there.
 *
 * Nothing here needs to survive a crash: the replica removes leftover scratch files at start.
 * The disk, the checkpoint buffer and the log are never written.
 */
export class DrillView implements BlockDevice, DiskWriteObserver {
  readonly description: string;
  readonly readOnly = false;
  readonly blockSize = 1;
  readonly maxRequest: number;
  readonly efficientZeroes = false;
  readonly granularity: number;
  readonly startedAt: Date;
  readonly #disk: BlockDevice;
  readonly #snapshotFile: FileDevice;
  readonly #overlayFile: FileDevice;
  readonly #files: DrillFiles;
  readonly #snapshot: GranuleSet;
  /** Snapshot copies in progress (and then waiting for view reads of the disk to finish). */
  readonly #snapshotting = new Map<number, Promise<void>>();
  /** View reads of the disk in progress, per granule. */
  readonly #diskReaders = new Map<number, number>();
  readonly #readersDone = new Map<number, Array<() => void>>();
  readonly #overlay: GranuleSet;
  readonly #filling = new Map<number, Promise<void>>();
  #writtenBytes = 0;

  private constructor(disk: BlockDevice, granularity: number, files: DrillFiles, snapshot: FileDevice, overlay: FileDevice) {
    this.description = `failover drill of ${disk.description}`;
    this.maxRequest = disk.maxRequest;
    this.granularity = granularity;
    this.startedAt = new Date();
    this.#disk = disk;
    this.#files = files;
    this.#snapshotFile = snapshot;
    this.#overlayFile = overlay;
    const granules = Math.ceil(disk.size / granularity);
    this.#snapshot = new GranuleSet(granules);
    this.#overlay = new GranuleSet(granules);
  }

  /** Creates the scratch files (replacing leftovers) for a view of `disk` as it is now. */
  static async create(disk: BlockDevice, granularity: number, files: DrillFiles): Promise<DrillView> {
    const snapshot = await scratchFile(files.snapshotPath, disk.size);
    try {
      const overlay = await scratchFile(files.overlayPath, disk.size);
      return new DrillView(disk, granularity, files, snapshot, overlay);
    } catch (err) {
      await snapshot.close();
      await unlink(files.snapshotPath).catch(() => {});
      throw err;
    }
  }

  get size(): number {
    return this.#disk.size;
  }

  /** Granules replication changed since the drill started (copied into the snapshot). */
  get snapshotGranules(): number {
    return this.#snapshot.size;
  }

  /** Granules the drill wrote. */
  get overlayGranules(): number {
    return this.#overlay.size;
  }

  /** Bytes the drill wrote. */
  get writtenBytes(): number {
    return this.#writtenBytes;
  }

  /** Replication is about to overwrite [offset, offset + length) of the disk: the view keeps the old contents first. */
  beforeDiskWrite(offset: number, length: number): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const g of this.#granules(offset, length)) {
      if (this.#snapshot.has(g) && !this.#snapshotting.has(g)) continue;
      let copy = this.#snapshotting.get(g);
      if (!copy) {
        copy = this.#copyToSnapshot(g).finally(() => this.#snapshotting.delete(g));
        this.#snapshotting.set(g, copy);
      }
      waits.push(copy);
    }
    return Promise.all(waits).then(() => undefined);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const reads: Promise<void>[] = [];
    for (const g of this.#granules(offset, buf.length)) {
      const start = Math.max(offset, g * this.granularity);
      const end = Math.min(offset + buf.length, (g + 1) * this.granularity);
      const part = buf.subarray(start - offset, end - offset);
      reads.push(this.#overlay.has(g) ? this.#overlayFile.read(part, start) : this.#readBelow(g, part, start));
    }
    await Promise.all(reads);
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    await Promise.all([...this.#granules(offset, data.length)].map((g) => this.#filled(g)));
    await this.#overlayFile.write(data, offset);
    this.#writtenBytes += data.length;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const zeros = Buffer.alloc(Math.min(length, ZERO_CHUNK));
    for (let at = offset; at < offset + length; at += zeros.length) {
      await this.write(zeros.subarray(0, Math.min(zeros.length, offset + length - at)), at);
    }
  }

  /** NBD TRIM lets the data stay: the drill keeps it. */
  async discard(_offset: number, _length: number): Promise<void> {}

  /** The drill's writes are thrown away at its end: there is nothing to make durable. */
  async flush(): Promise<void> {}

  allocBuffer(size: number): Promise<Buffer> {
    return Promise.resolve(Buffer.alloc(size));
  }

  /** Closes and removes both scratch files. Call once nothing reads or writes the view and the disk no longer calls {@link beforeDiskWrite}. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#snapshotting.values(), ...this.#filling.values()]);
    await Promise.all([this.#snapshotFile.close(), this.#overlayFile.close()]);
    await Promise.all([unlink(this.#files.snapshotPath).catch(() => {}), unlink(this.#files.overlayPath).catch(() => {})]);
  }

  *#granules(offset: number, length: number): Generator<number> {
    const end = Math.min(offset + length, this.size);
    if (length <= 0 || offset >= end) return;
    const last = Math.floor((end - 1) / this.granularity);
    for (let g = Math.floor(offset / this.granularity); g <= last; g++) yield g;
  }

  #granuleLength(g: number): number {
    return Math.min(this.granularity, this.size - g * this.granularity);
  }

  /** Copies granule `g` of the disk into the snapshot, then waits for view reads of the disk that began before. */
  async #copyToSnapshot(g: number): Promise<void> {
    const at = g * this.granularity;
    const data = Buffer.allocUnsafe(this.#granuleLength(g));
    await this.#disk.read(data, at);
    await this.#snapshotFile.write(data, at);
    this.#snapshot.add(g);
    // From here view reads go to the snapshot; those already reading the disk must finish before the write lands.
    while ((this.#diskReaders.get(g) ?? 0) > 0) {
      await new Promise<void>((resolve) => {
        const waiters = this.#readersDone.get(g) ?? [];
        waiters.push(resolve);
        this.#readersDone.set(g, waiters);
      });
    }
  }

  /** Reads part of granule `g` from under the overlay: the snapshot where replication changed it, else the disk. */
  async #readBelow(g: number, part: Uint8Array, at: number): Promise<void> {
    if (this.#snapshot.has(g)) return this.#snapshotFile.read(part, at);
    this.#diskReaders.set(g, (this.#diskReaders.get(g) ?? 0) + 1);
    try {
      await this.#disk.read(part, at);
    } finally {
      const left = this.#diskReaders.get(g)! - 1;
      if (left > 0) this.#diskReaders.set(g, left);
      else {
        this.#diskReaders.delete(g);
        const waiters = this.#readersDone.get(g) ?? [];
        this.#readersDone.delete(g);
        for (const w of waiters) w();
      }
    }
  }

  /** Resolves once granule `g` is in the overlay, copied from below by the first write that needed it. */
  #filled(g: number): Promise<void> {
    if (this.#overlay.has(g)) return Promise.resolve();
    let fill = this.#filling.get(g);
    if (!fill) {
      fill = (async () => {
        const at = g * this.granularity;
        const data = Buffer.allocUnsafe(this.#granuleLength(g));
        await this.#readBelow(g, data, at);
        await this.#overlayFile.write(data, at);
        this.#overlay.add(g);
      })().finally(() => this.#filling.delete(g));
      this.#filling.set(g, fill);
    }
    return fill;
  }
}

/** A new sparse file of `size` bytes that reads as zeros, opened read-write. */
async function scratchFile(path: string, size: number): Promise<FileDevice> {
  try {
    const fh = await open(path, 'w');
    try {
      await fh.truncate(size);
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw toIoError(err, 'open', path);
  }
  return FileDevice.open({ kind: 'file', path, writable: true, role: 'target' });
}

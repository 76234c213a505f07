/**
 * Test kit for the replica: disks with random contents, checkpoint buffers over them, devices
 * that can be held, slowed or made to fail at chosen calls, and a trace of the real file
 * syscalls (pwrite, fdatasync, fsync) in the order they were issued.
 */
import { randomBytes } from 'node:crypto';
import { readlinkSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { onTestFinished, vi } from 'vitest';
import type { BlockDevice } from '../../src/io/BlockDevice.js';
import { FileDevice } from '../../src/io/FileDevice.js';
import { DeviceWrapper } from '../../src/io/DeviceWrapper.js';
import { CheckpointBuffer, type BufferFile, type ReplicaDurability } from '../../src/replica/CheckpointBuffer.js';

/** Closes `thing` once the test is over (given up on after a moment: a "crashed" object may never settle). */
function closeAfterTest(thing: { close(): Promise<void> }): void {
  onTestFinished(async () => {
    await Promise.race([thing.close().catch(() => {}), new Promise((r) => setTimeout(r, 200))]);
  });
}

/** A disk image of `size` random bytes; returns its path, contents and an open writable device (closed after the test). */
export async function randomDisk(dir: string, size: number, name = 'disk.img'): Promise<{ path: string; contents: Buffer; device: FileDevice }> {
  const path = join(dir, name);
  const contents = randomBytes(size);
  await writeFile(path, contents);
  const device = await FileDevice.open({ kind: 'file', path, writable: true, role: 'target' });
  closeAfterTest(device);
  return { path, contents, device };
}

/** Opens (creating) a buffer file for a checkpoint buffer. */
export async function bufferFile(path: string): Promise<FileDevice> {
  await (await open(path, 'a')).close();
  return FileDevice.open({ kind: 'file', path, writable: true, role: 'target' });
}

/** Waits until `condition()` holds, failing after `ms` (a hang is a failure, never a stuck test). */
export async function until(condition: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Paths of a buffer and its log in `dir`. */
export function bufferPaths(dir: string): { buffer: string; log: string } {
  return { buffer: join(dir, 'disk.img.replica-buffer'), log: join(dir, 'disk.img.replica-log') };
}

/** A new checkpoint buffer (interval 0) over `disk`, with files in `dir` (in `durability` mode, default power). */
export async function newBuffer(dir: string, disk: BlockDevice, granularity: number, buffer?: BufferFile, durability?: ReplicaDurability): Promise<CheckpointBuffer> {
  const paths = bufferPaths(dir);
  const made = await CheckpointBuffer.create({ disk, buffer: buffer ?? (await bufferFile(paths.buffer)), logPath: paths.log, granularity, durability }, 0);
  closeAfterTest(made);
  return made;
}

/** The buffer a restart finds in `dir` (the previous object abandoned, as a crash leaves it). */
export async function recoverBuffer(dir: string, disk: BlockDevice, granularity: number, durability?: ReplicaDurability): Promise<CheckpointBuffer> {
  const paths = bufferPaths(dir);
  const found = await CheckpointBuffer.recover({ disk, buffer: await bufferFile(paths.buffer), logPath: paths.log, granularity, durability });
  closeAfterTest(found);
  return found;
}

/** Writes through the buffer's protocol: preserve first, then the disk (what ReplicaDevice does). */
export async function writeThrough(buffer: CheckpointBuffer, disk: BlockDevice, data: Uint8Array, offset: number): Promise<void> {
  await buffer.preserve(offset, data.length);
  await disk.write(data, offset);
}

/** A file's bytes. */
export function contentsOf(path: string): Promise<Buffer> {
  return readFile(path);
}

/** What a {@link HookedDevice} calls before each operation; it may wait, or throw to fail the call. */
export interface DeviceHooks {
  beforeRead?(offset: number, length: number, n: number): Promise<void> | void;
  beforeWrite?(offset: number, length: number, n: number): Promise<void> | void;
  beforeFlush?(n: number): Promise<void> | void;
  beforeTruncate?(size: number): Promise<void> | void;
}

/** A device (and buffer file) that runs hooks before each call and counts the calls. */
export class HookedDevice extends DeviceWrapper<FileDevice> implements BufferFile {
  readonly reads: Array<{ offset: number; length: number }> = [];
  readonly writes: Array<{ offset: number; length: number }> = [];
  flushes = 0;
  hooks: DeviceHooks;

  constructor(inner: FileDevice, hooks: DeviceHooks = {}) {
    super(inner);
    this.hooks = hooks;
  }

  override async read(buf: Uint8Array, offset: number): Promise<void> {
    this.reads.push({ offset, length: buf.length });
    await this.hooks.beforeRead?.(offset, buf.length, this.reads.length);
    await super.read(buf, offset);
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    this.writes.push({ offset, length: data.length });
    await this.hooks.beforeWrite?.(offset, data.length, this.writes.length);
    await super.write(data, offset);
  }
  override async writeZeroes(offset: number, length: number): Promise<void> {
    this.writes.push({ offset, length });
    await this.hooks.beforeWrite?.(offset, length, this.writes.length);
    await super.writeZeroes(offset, length);
  }
  override async flush(): Promise<void> {
    this.flushes++;
    await this.hooks.beforeFlush?.(this.flushes);
    await super.flush();
  }
  async truncate(size: number): Promise<void> {
    await this.hooks.beforeTruncate?.(size);
    await this.inner.truncate(size);
  }
}

/** A promise to hold something with, and the function that lets it go. */
export function latch(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

/** Waits for `n` turns of the event loop (lets I/O callbacks run). */
export async function settle(n = 20): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

/** One file syscall, as {@link traceFileSyscalls} saw it issued. */
export interface FileSyscall {
  readonly op: 'write' | 'datasync' | 'sync';
  /** The file's path at the time (through /proc/self/fd). */
  readonly path: string;
  readonly position?: number;
  /** A copy of the bytes written. */
  readonly data?: Buffer;
}

/**
 * Records every FileHandle write, datasync and sync of this process, in the order issued, until
 * the test ends. Each call is recorded when it completes, so a later entry was issued after an
 * earlier one had finished: the order durability rests on.
 */
export async function traceFileSyscalls(): Promise<FileSyscall[]> {
  const probe = await open(import.meta.filename, 'r');
  const proto = Object.getPrototypeOf(probe) as Record<string, (...args: unknown[]) => Promise<unknown>>;
  await probe.close();
  const calls: FileSyscall[] = [];
  const pathOf = (fd: number): string => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return `fd ${fd}`;
    }
  };
  for (const op of ['write', 'datasync', 'sync'] as const) {
    const original = proto[op]!;
    const spy = vi.spyOn(proto, op).mockImplementation(async function (this: { fd: number }, ...args: unknown[]) {
      const path = pathOf(this.fd);
      const result = await original.apply(this, args);
      if (op === 'write') {
        const [buf, off, len, position] = args as [Uint8Array, number | undefined, number | undefined, number | undefined];
        const start = off ?? 0;
        const data = Buffer.from(buf.subarray(start, start + (len ?? buf.length - start)));
        calls.push({ op, path, position: position ?? undefined, data });
      } else {
        calls.push({ op, path });
      }
      return result;
    });
    onTestFinished(() => spy.mockRestore());
  }
  return calls;
}

/** The granule numbers in an activity-log record (magic ALRC, sequence, count, crc, numbers), or undefined if `data` is no record. */
export function recordGranules(data: Buffer | undefined): number[] | undefined {
  if (!data || data.length < 16 || data.readUInt32LE(0) !== 0x43524c41) return undefined;
  const count = data.readUInt32LE(8);
  return Array.from({ length: count }, (_, i) => data.readUInt32LE(16 + 4 * i));
}

import type { BlockDevice } from './BlockDevice.js';

/**
 * A device in front of another: every property and call goes to `inner` unless a subclass says
 * otherwise, so a wrapper (fault injection, a replication link's bookkeeping, a test's hooks)
 * overrides only what it changes. `blockStatus` is not passed on: a wrapper that serves it says so.
 */
export class DeviceWrapper<D extends BlockDevice = BlockDevice> implements BlockDevice {
  protected readonly inner: D;

  constructor(inner: D) {
    this.inner = inner;
  }

  get description(): string {
    return this.inner.description;
  }
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get maxRequest(): number {
    return this.inner.maxRequest;
  }
  get efficientZeroes(): boolean {
    return this.inner.efficientZeroes;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.inner.read(buf, offset);
  }
  write(data: Uint8Array, offset: number): Promise<void> {
    return this.inner.write(data, offset);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inner.writeZeroes(offset, length);
  }
  discard(offset: number, length: number): Promise<void> {
    return this.inner.discard(offset, length);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  allocBuffer(size: number): Promise<Buffer> {
    return this.inner.allocBuffer(size);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

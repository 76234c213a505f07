import type { AllocationExtent, BlockDevice } from '../../src/io/BlockDevice.js';

/** A BlockDevice in memory, for server tests: counts requests, optional block status and limits. */
export class MemoryDevice implements BlockDevice {
  readonly description = 'memory';
  readonly readOnly: boolean;
  readonly blockSize: number;
  readonly maxRequest: number;
  readonly efficientZeroes = true;
  readonly data: Buffer;
  flushes = 0;
  reads = 0;
  blockStatus?: (offset: number, length: number) => Promise<readonly AllocationExtent[]>;

  constructor(size: number, options: { readOnly?: boolean; blockSize?: number; maxRequest?: number; extents?: readonly AllocationExtent[] } = {}) {
    this.data = Buffer.alloc(size);
    this.readOnly = options.readOnly ?? false;
    this.blockSize = options.blockSize ?? 1;
    this.maxRequest = options.maxRequest ?? 32 << 20;
    const extents = options.extents;
    if (extents) {
      // Report the fixed extent list, from whichever one holds `offset`.
      this.blockStatus = async (offset) => {
        const out: AllocationExtent[] = [];
        let at = 0;
        for (const e of extents) {
          if (at + e.length > offset) out.push(at >= offset ? e : { ...e, length: at + e.length - offset });
          at += e.length;
        }
        return out;
      };
    }
  }

  get size(): number {
    return this.data.length;
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.reads++;
    buf.set(this.data.subarray(offset, offset + buf.length));
  }
  async write(data: Uint8Array, offset: number): Promise<void> {
    this.data.set(data, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async discard(): Promise<void> {}
  async flush(): Promise<void> {
    this.flushes++;
  }
  async allocBuffer(size: number): Promise<Buffer> {
    return Buffer.alloc(size);
  }
  async close(): Promise<void> {}
}

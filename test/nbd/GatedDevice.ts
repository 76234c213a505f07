import { MemoryDevice } from '../helpers/MemoryDevice.js';

/**
 * A memory device whose writes wait at a gate until `open()`: a device slower than its client,
 * so tests can see what the server holds meanwhile.
 */
export class GatedDevice extends MemoryDevice {
  #gate: Promise<void>;
  #open!: () => void;
  /** Writes that reached the device (and wait at the gate while it is shut). */
  writesStarted = 0;

  constructor(size: number, options: { maxRequest?: number } = {}) {
    super(size, options);
    this.#gate = new Promise((resolve) => (this.#open = resolve));
  }

  /** Lets every write waiting, and every later one, through. */
  open(): void {
    this.#open();
  }

  override async write(data: Uint8Array, offset: number): Promise<void> {
    this.writesStarted++;
    await this.#gate;
    await super.write(data, offset);
  }
}

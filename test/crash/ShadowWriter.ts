import { randomFillSync } from 'node:crypto';
import { NbdDevice } from '../../dist/index.js';

/** Bytes per write: one page, which a SIGKILL cannot tear (the kernel copies whole pages or none). */
export const BLOCK = 4096;

type Device = NbdDevice;

/**
 * A writer that keeps a shadow of every write the image acknowledged. Writes lost in flight when
 * the server dies leave their blocks uncertain: the image may hold the old or the new data there,
 * until a later acknowledged write covers the block again.
 */
export class ShadowWriter {
  readonly shadow: Buffer;
  readonly #blocks: number;
  readonly #random: () => number;
  /** Block → the contents it may have besides the shadow's. */
  readonly #uncertain = new Map<number, Buffer[]>();
  /** Blocks with a write in flight: two overlapping writes in flight may land in either order, so none is issued. */
  readonly #inFlight = new Set<number>();
  /** Writes go to blocks from here... */
  #first = 0;
  /** ...for this many blocks. */
  #span: number;
  #device: Device | undefined;
  #lanes: Promise<void>[] = [];
  #stopping = false;
  acknowledged = 0;

  constructor(initial: Buffer, random: () => number) {
    this.shadow = Buffer.from(initial);
    this.#blocks = initial.length / BLOCK;
    this.#span = this.#blocks;
    this.#random = random;
  }

  /** Keeps the writes to `share` of the image, at a random place (an application's working set). */
  focus(share: number): void {
    this.#span = Math.max(1, Math.floor(this.#blocks * share));
    this.#first = Math.floor(this.#random() * (this.#blocks - this.#span + 1));
  }

  /** Connects to the export and starts `lanes` writers, each with one write in flight. */
  async start(uri: string, lanes: number): Promise<void> {
    this.#stopping = false;
    this.#device = await NbdDevice.open({ kind: 'nbd', uri, role: 'target', writable: true });
    this.#lanes = Array.from({ length: lanes }, () => this.#lane(this.#device!));
  }

  /** Stops the lanes: at once (the server died: their writes in flight are lost) or after their writes land. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await Promise.all(this.#lanes);
    this.#lanes = [];
    await this.#device?.close().catch(() => undefined);
    this.#device = undefined;
  }

  async #lane(device: Device): Promise<void> {
    while (!this.#stopping) {
      let block: number;
      do block = this.#first + Math.floor(this.#random() * this.#span);
      while (this.#inFlight.has(block));
      this.#inFlight.add(block);
      const data = randomFillSync(Buffer.allocUnsafe(BLOCK));
      const before = Buffer.from(this.shadow.subarray(block * BLOCK, (block + 1) * BLOCK));
      try {
        await device.write(data, block * BLOCK);
      } catch {
        this.#inFlight.delete(block);
        // Lost with the connection: it may or may not have reached the image.
        const maybe = this.#uncertain.get(block) ?? [before];
        maybe.push(data);
        this.#uncertain.set(block, maybe);
        return;
      }
      this.#inFlight.delete(block);
      data.copy(this.shadow, block * BLOCK);
      this.#uncertain.delete(block);
      this.acknowledged++;
    }
  }

  /** Blocks where `image` differs from every write acknowledged (allowing the uncertain ones their alternatives). */
  mismatches(image: Buffer): number[] {
    const bad: number[] = [];
    for (let b = 0; b < this.#blocks; b++) {
      const got = image.subarray(b * BLOCK, (b + 1) * BLOCK);
      if (got.equals(this.shadow.subarray(b * BLOCK, (b + 1) * BLOCK))) continue;
      const maybe = this.#uncertain.get(b);
      if (maybe?.some((m) => m.equals(got))) {
        // Settled: what the image holds is now what it holds.
        got.copy(this.shadow, b * BLOCK);
        continue;
      }
      bad.push(b);
    }
    return bad;
  }

  /** After a check, every uncertain block holds what the image showed (see {@link mismatches}). */
  settle(): void {
    this.#uncertain.clear();
  }
}

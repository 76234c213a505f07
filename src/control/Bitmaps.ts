import { DEFAULT_GRANULARITY, DirtyBitmap, MAX_GRANULARITY } from '../bitmap/DirtyBitmap.js';
import type { BlockGraph } from './BlockGraph.js';
import type { BlockNode, NodeBitmap } from './BlockNode.js';
import type { WriteBarrier } from './Exports.js';
import type { PersistentBitmapFiles } from './PersistentBitmapFiles.js';
import type { BitmapStore } from './persistentBitmaps.js';
import { QmpError } from './qmp/QmpError.js';
import { isObject } from './qmp/schema.js';

/** QEMU's BDRV_BITMAP_MAX_NAME_SIZE. */
const MAX_NAME = 1023;

/** A source of block-dirty-bitmap-merge: a name on the target's node, or {node, name}. */
export type BitmapRef = string | { node: string; name: string };

/** One bitmap action, as the command or a transaction gives it. */
export type BitmapAction =
  | { type: 'block-dirty-bitmap-add'; node: string; name: string; granularity?: number; persistent?: boolean; disabled?: boolean }
  | { type: 'block-dirty-bitmap-remove'; node: string; name: string }
  | { type: 'block-dirty-bitmap-clear'; node: string; name: string }
  | { type: 'block-dirty-bitmap-enable'; node: string; name: string }
  | { type: 'block-dirty-bitmap-disable'; node: string; name: string }
  | { type: 'block-dirty-bitmap-merge'; node: string; target: string; bitmaps: BitmapRef[] };

/** A bitmap as the actions checked so far leave it. */
interface Staged {
  readonly granularity: number;
  readonly persistent: boolean;
}

/** Actions checked against the state they will find, ready to apply together. */
export interface PreparedBitmaps {
  /**
   * Applies every action at once (synchronously: no write can mark in between), then makes
   * merges into persistent bitmaps durable and deletes removed bitmaps' files. When a persistent
   * bitmap starts recording, new writes are held until none is in flight first, unless the
   * caller holds them already (`writesHeld`).
   */
  commit(options?: { writesHeld?: boolean }): Promise<void>;
  /** Undoes what preparing did (files created for new persistent bitmaps). */
  abort(): Promise<void>;
}

/**
 * Dirty bitmaps on block nodes (block-dirty-bitmap-*), alone or as transaction actions. Actions
 * are checked in order against the state the earlier ones leave (so `add b` then `clear b` is
 * fine), then applied together.
 *
 * A persistent bitmap must not lose a write's mark in a crash (see PersistentBitmapFiles): a write
 * marks only what it logged first, so a persistent bitmap starts recording (add, enable) while no
 * write is in flight; bits a merge ORs in are saved before the command returns, and before a
 * source removed in the same transaction loses its files. A clear may be undone by a crash
 * before the next checkpoint, a remove by a power loss just after it: that only leaves more dirty.
 */
export class Bitmaps {
  readonly #graph: BlockGraph;
  readonly #store: BitmapStore;
  readonly #barrier: WriteBarrier;

  constructor(graph: BlockGraph, store: BitmapStore, barrier: WriteBarrier) {
    this.#graph = graph;
    this.#store = store;
    this.#barrier = barrier;
  }

  async run(action: BitmapAction): Promise<void> {
    const prepared = await this.prepare([action]);
    await prepared.commit();
  }

  async prepare(actions: readonly BitmapAction[]): Promise<PreparedBitmaps> {
    /** Per node, the bitmaps there will be after the actions checked so far (undefined: removed). */
    const staged = new Map<BlockNode, Map<string, Staged | undefined>>();
    const exists = (node: BlockNode, name: string): Staged | undefined => {
      const s = staged.get(node);
      if (s?.has(name)) return s.get(name);
      const b = node.bitmaps.get(name);
      return b ? { granularity: b.bitmap.granularity, persistent: b.persistent } : undefined;
    };
    const stage = (node: BlockNode, name: string, v: Staged | undefined): void => {
      let s = staged.get(node);
      if (!s) staged.set(node, (s = new Map()));
      s.set(name, v);
    };
    const need = (node: BlockNode, name: string): Staged => {
      const b = exists(node, name);
      if (!b) throw new QmpError(`Dirty bitmap '${name}' not found`);
      return b;
    };
    const steps: Array<() => void> = [];
    const created: NodeBitmap[] = [];
    const removed: NodeBitmap[] = [];
    /** Persistent bitmaps a merge ORs bits into: saved before the command returns. */
    const mergedInto = new Set<PersistentBitmapFiles>();
    let startsRecording = false;
    try {
      for (const a of actions) {
        const node = this.#graph.get(a.node);
        switch (a.type) {
          case 'block-dirty-bitmap-add': {
            const byReplica = node.chain().find((n) => n.replica !== undefined);
            if (byReplica) throw new QmpError(`Node '${byReplica.name}' is busy: it is in use by replica '${byReplica.replica}'`);
            if (a.name === '') throw new QmpError('Bitmap name cannot be empty');
            if (a.name.length > MAX_NAME) throw new QmpError(`Bitmap name too long: ${a.name.slice(0, 20)}...`);
            if (exists(node, a.name)) throw new QmpError(`Bitmap already exists: ${a.name}`);
            const granularity = a.granularity ?? DEFAULT_GRANULARITY;
            if (granularity < 512 || (granularity & (granularity - 1)) !== 0) throw new QmpError('Granularity must be power of 2 and at least 512');
            if (granularity > MAX_GRANULARITY) throw new QmpError(`Granularity must be at most ${MAX_GRANULARITY}`);
            const persistent = a.persistent === true;
            const path = persistent ? await this.#store.pathFor(node, a.name) : undefined;
            const bitmap = DirtyBitmap.create(node.size, granularity);
            const files = path !== undefined ? await this.#store.create(node, a.name, path, bitmap) : undefined;
            const b: NodeBitmap = { name: a.name, bitmap, persistent, path, files, recording: a.disabled !== true, inconsistent: false };
            if (persistent) {
              created.push(b);
              startsRecording ||= b.recording;
            }
            stage(node, a.name, { granularity, persistent });
            steps.push(() => node.bitmaps.set(b.name, b));
            break;
          }
          case 'block-dirty-bitmap-remove': {
            need(node, a.name);
            stage(node, a.name, undefined);
            steps.push(() => {
              const b = node.bitmaps.get(a.name)!;
              node.bitmaps.delete(a.name);
              if (b.persistent) removed.push(b);
            });
            break;
          }
          case 'block-dirty-bitmap-clear':
            need(node, a.name);
            steps.push(() => node.bitmaps.get(a.name)!.bitmap.clear());
            break;
          case 'block-dirty-bitmap-enable':
          case 'block-dirty-bitmap-disable': {
            const { persistent } = need(node, a.name);
            const recording = a.type === 'block-dirty-bitmap-enable';
            if (recording && persistent) startsRecording = true;
            steps.push(() => (node.bitmaps.get(a.name)!.recording = recording));
            break;
          }
          case 'block-dirty-bitmap-merge': {
            need(node, a.target);
            const sources = a.bitmaps.map((ref) => {
              const n = isObject(ref) ? this.#graph.get(ref.node) : node;
              const name = isObject(ref) ? ref.name : ref;
              need(n, name);
              if (n.size !== node.size) throw new QmpError(`Bitmaps are incompatible and can't be merged`);
              return { n, name };
            });
            steps.push(() => {
              const into = node.bitmaps.get(a.target)!;
              for (const { n, name } of sources) mergeInto(into.bitmap, n.bitmaps.get(name)!.bitmap);
              if (into.files) mergedInto.add(into.files);
            });
            break;
          }
        }
      }
    } catch (err) {
      for (const b of created) await this.#store.remove(b);
      throw err;
    }
    return {
      commit: async (options = {}) => {
        const hold = startsRecording && options.writesHeld !== true;
        if (hold) await this.#barrier.quiesce();
        try {
          for (const step of steps) step();
        } finally {
          if (hold) this.#barrier.release();
        }
        for (const b of created) b.files!.start();
        for (const files of mergedInto) if (!removed.some((b) => b.files === files)) await files.checkpoint();
        for (const b of removed) await this.#store.remove(b);
      },
      abort: async () => {
        for (const b of created) await this.#store.remove(b);
      },
    };
  }
}

/** ORs `from` into `into`; bitmaps of other granularities merge by the byte ranges they mark. */
function mergeInto(into: DirtyBitmap, from: DirtyBitmap): void {
  if (into === from) return;
  if (into.granularity === from.granularity && into.size === from.size) {
    into.merge(from);
    return;
  }
  for (const [offset, length] of from.extents()) into.mark(offset, length);
}

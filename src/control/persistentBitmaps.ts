import { createHash } from 'node:crypto';
import { readdir, realpath } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import type { BlockNode, NodeBitmap } from './BlockNode.js';
import { PersistentBitmapFiles, type BitmapFilesOptions } from './PersistentBitmapFiles.js';
import { QmpError } from './qmp/QmpError.js';

/** How a {@link BitmapStore} keeps its files. */
export interface BitmapStoreOptions {
  /** Milliseconds between checkpoints of a bitmap while it changes (default: the Checkpointer's, 2 s). */
  readonly checkpointIntervalMs?: number;
  /** Where the operator hears of a bitmap recovered after a crash, or loaded all dirty, and why. */
  readonly notice?: (message: string) => void;
}

/**
 * Where a node's persistent bitmaps live: one bitmap file (docs/bitmap-format.md) per bitmap,
 * named `IMAGE.NAME.bmp` next to a file node's image, or, with `--bitmap-dir DIR`,
 * `DIR/IMAGE-HASH.NAME.bmp` (HASH: of the image's real path or the export's URI, so two images
 * with one base name do not collide). NAME is percent-encoded, dots included, so the part between
 * the prefix and `.bmp` is exactly one encoded name. Only nodes with an image of their own (file,
 * nbd) hold persistent bitmaps; an nbd node needs --bitmap-dir.
 *
 * While the daemon runs, each bitmap's file is flagged in use and has an activity log beside it,
 * `IMAGE.NAME.alog` (src/state/ActivityLog.ts; PersistentBitmapFiles.ts keeps the pair). A write
 * that marks the bitmap waits, before it is let through, until a record naming its 4 MiB extent
 * is fdatasync'ed; a write to an extent already named waits for nothing. Every checkpoint
 * interval (2 s by default) while the bitmap changes, the bitmap file is saved (fsync'ed, renamed
 * into place, directory fsync'ed) and the log rewritten without the extents idle since. So after
 * kill -9 or a power loss a persistent bitmap loads consistent: the file's bits with the log's
 * extents dirty, a superset of what was written. A file in use with no log (an older build's),
 * or with a log that is damaged or not its pair (another image size, another moment), loads all
 * dirty and inconsistent instead (invariant 5 of docs/architecture.md). A clean save clears the
 * flag, and deletes the log, when the daemon stops or the node is deleted.
 */
export class BitmapStore {
  readonly #dir: string | undefined;
  readonly #options: BitmapStoreOptions;

  constructor(bitmapDir: string | undefined, options: BitmapStoreOptions = {}) {
    this.#dir = bitmapDir;
    this.#options = options;
  }

  /** The file prefix of a node's bitmaps, or why it cannot have persistent ones. */
  async prefixFor(node: BlockNode): Promise<{ dir: string; prefix: string } | { refused: string }> {
    if (node.driver === 'raw') {
      return { refused: `Can't store persistent bitmaps to ${node.name}: a raw node has no image of its own; add the bitmap to its file node '${node.leaf().name}'` };
    }
    if (node.driver === 'file') {
      const real = await realpath(node.filename).catch(() => node.filename);
      if (!this.#dir) return { dir: dirname(real), prefix: basename(real) };
      return { dir: this.#dir, prefix: `${basename(real)}-${hash(real)}` };
    }
    if (!this.#dir) return { refused: `Can't store persistent bitmaps to ${node.name}: an nbd node needs the daemon's --bitmap-dir` };
    return { dir: this.#dir, prefix: `nbd-${hash(node.filename)}` };
  }

  /** The path a new persistent bitmap will be saved at; throws QEMU's error where none can be. */
  async pathFor(node: BlockNode, name: string): Promise<string> {
    const where = await this.prefixFor(node);
    if ('refused' in where) throw new QmpError(where.refused);
    return join(where.dir, `${where.prefix}.${encodeName(name)}.bmp`);
  }

  /**
   * Loads every persistent bitmap saved for the node's image, each recovered through its log if
   * its writer crashed, flagged in use and checkpointed from now on.
   */
  async load(node: BlockNode): Promise<NodeBitmap[]> {
    const where = await this.prefixFor(node);
    if ('refused' in where) return [];
    const names = await readdir(where.dir).catch(() => [] as string[]);
    const found: NodeBitmap[] = [];
    try {
      for (const file of names.sort()) {
        if (!file.startsWith(`${where.prefix}.`) || !file.endsWith('.bmp')) continue;
        const encoded = file.slice(where.prefix.length + 1, -'.bmp'.length);
        if (encoded === '' || encoded.includes('.')) continue; // another image's bitmap (a longer base name)
        let name: string;
        try {
          name = decodeURIComponent(encoded);
        } catch {
          continue;
        }
        const path = join(where.dir, file);
        let opened;
        try {
          opened = await PersistentBitmapFiles.open(path, node.size, this.#filesOptions(node, name));
        } catch (err) {
          throw new QmpError(`Could not load persistent bitmap '${name}' of ${node.name} from ${path}: ${(err as Error).message}`);
        }
        opened.files.start();
        found.push({ name, bitmap: opened.bitmap, persistent: true, path, files: opened.files, recording: true, inconsistent: !opened.consistent });
      }
    } catch (err) {
      // The node will not open: the bitmaps loaded so far are saved as they are.
      for (const b of found) await b.files!.closeClean().catch(() => undefined);
      throw err;
    }
    return found;
  }

  /** The files of a new persistent bitmap: saved empty, flagged in use, with its log (checkpoints start with {@link PersistentBitmapFiles.start}). */
  async create(node: BlockNode, name: string, path: string, bitmap: DirtyBitmap): Promise<PersistentBitmapFiles> {
    return PersistentBitmapFiles.create(path, bitmap, this.#filesOptions(node, name));
  }

  /** A clean save: the file matches the bitmap, which nothing changes any more; the log goes. */
  async saveClean(b: NodeBitmap): Promise<void> {
    await b.files!.closeClean();
  }

  /** Deletes a removed bitmap's files. */
  async remove(b: NodeBitmap): Promise<void> {
    await b.files!.discard();
  }

  #filesOptions(node: BlockNode, name: string): BitmapFilesOptions {
    return {
      describe: `'${name}' of ${node.name}`,
      checkpointIntervalMs: this.#options.checkpointIntervalMs,
      notice: this.#options.notice ?? ((message) => process.emitWarning(message)),
    };
  }
}

function hash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

function encodeName(name: string): string {
  return encodeURIComponent(name).replace(/\./g, '%2E').replace(/\*/g, '%2A');
}

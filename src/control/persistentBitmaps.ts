import { createHash } from 'node:crypto';
import { readdir, realpath, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { loadBitmap, markInUse, saveBitmap } from '../bitmap/BitmapFile.js';
import type { BlockNode, NodeBitmap } from './BlockNode.js';
import { QmpError } from './qmp/QmpError.js';

/**
 * Where a node's persistent bitmaps live: one bitmap file (docs/bitmap-format.md) per bitmap,
 * named `IMAGE.NAME.bmp` next to a file node's image, or, with `--bitmap-dir DIR`,
 * `DIR/IMAGE-HASH.NAME.bmp` (HASH: of the image's real path or the export's URI, so two images
 * with one base name do not collide). NAME is percent-encoded, dots included, so the part between
 * the prefix and `.bmp` is exactly one encoded name. Only nodes with an image of their own (file,
 * nbd) hold persistent bitmaps; an nbd node needs --bitmap-dir.
 *
 * While the daemon runs, every persistent bitmap's file is flagged in use: after a crash it loads
 * all dirty and inconsistent (invariant 5 of docs/architecture.md). A clean save clears the flag when the
 * daemon stops or the node is deleted.
 */
export class BitmapStore {
  readonly #dir: string | undefined;

  constructor(bitmapDir: string | undefined) {
    this.#dir = bitmapDir;
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

  /** Loads every persistent bitmap saved for the node's image and flags each file in use. */
  async load(node: BlockNode): Promise<NodeBitmap[]> {
    const where = await this.prefixFor(node);
    if ('refused' in where) return [];
    const names = await readdir(where.dir).catch(() => [] as string[]);
    const found: NodeBitmap[] = [];
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
      let loaded;
      try {
        loaded = await loadBitmap(path, { size: node.size });
      } catch (err) {
        throw new QmpError(`Could not load persistent bitmap '${name}' of ${node.name} from ${path}: ${(err as Error).message}`);
      }
      await markInUse(path);
      found.push({ name, bitmap: loaded.bitmap, persistent: true, path, recording: true, inconsistent: !loaded.consistent });
    }
    return found;
  }

  /** Saves a new persistent bitmap, flagged in use. */
  async create(b: NodeBitmap): Promise<void> {
    await saveBitmap(b.path!, b.bitmap, { inUse: true });
  }

  /** A clean save: the file matches the bitmap, which nothing changes any more. */
  async saveClean(b: NodeBitmap): Promise<void> {
    await saveBitmap(b.path!, b.bitmap);
  }

  async remove(b: NodeBitmap): Promise<void> {
    await unlink(b.path!).catch(() => undefined);
  }
}

function hash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

function encodeName(name: string): string {
  return encodeURIComponent(name).replace(/\./g, '%2E').replace(/\*/g, '%2A');
}

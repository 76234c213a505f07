import { BitmapError, ErrorCode, InvalidArgumentError } from '../errors.js';
import {
  bitCountFor,
  COUNT_SLOT_INDEXES,
  DEFAULT_GRANULARITY,
  layoutFor,
  PRIVATE_COUNT_SLOTS,
  QUIET_INDEX,
  SHARED_COUNT_INDEX,
  SLOT_CLAIM_INDEX,
  type BitmapLayout,
} from './BitmapLayout.js';
import { waitForChange } from '../util/atomicsWait.js';
import { BitmapSuccession, type Succession } from './BitmapSuccession.js';
import { lowestBit, maskFrom, maskThrough, popcount32 } from './wordOps.js';

export { DEFAULT_GRANULARITY, MAX_BIT_COUNT, MAX_GRANULARITY, MIN_GRANULARITY, PRIVATE_COUNT_SLOTS } from './BitmapLayout.js';
export type { Succession } from './BitmapSuccession.js';

/**
 * A bitmap as plain data, for `postMessage`: the shared memory and its geometry. Reopen it on the
 * other thread with {@link DirtyBitmap.fromShared}; both handles then update the same bits.
 */
export interface SharedBitmap {
  /** Every word of the bitmap: the dirty count's slots, the bits and the summary levels. */
  readonly buffer: SharedArrayBuffer;
  /** Image size in bytes. */
  readonly size: number;
  /** Bytes per bit. */
  readonly granularity: number;
  /** A frozen bitmap stays read-only on every thread. */
  readonly frozen: boolean;
}

/** Options of {@link DirtyBitmap.extents}. */
export interface ExtentOptions {
  /** The bit to start at (default 0). */
  fromBit?: number;
  /** Largest extent in bytes (default: no limit). An extent is at least one granule. */
  maxBytes?: number;
  /** After the end of the image, go on from bit 0 up to `fromBit` (default false). */
  wrap?: boolean;
}

/** Count changes are applied at least this often in long operations, so the count never drifts far. */
const COUNT_FLUSH_BITS = 1 << 15;

/**
 * The dirty bitmap: one bit per `granularity` bytes of an image, set when a write lands there and
 * cleared when the copier claims the extent.
 *
 * It lives in a SharedArrayBuffer and changes only through Atomics, so write interceptors on other
 * threads mark it ({@link share} / {@link fromShared}) while the coordinator drains it. Summary
 * levels (one bit per word of the level below, as in QEMU's HBitmap) make searches cost
 * O(dirty words), not O(size). A summary bit may be set over a word that is zero again (searches
 * clear it lazily); it is never clear over a non-zero word once the mark that made the word
 * non-zero has returned. (A mark into a word that is already non-zero returns at once, so for a
 * few nanoseconds its bits may be counted but not yet found by a search; with writers quiesced,
 * every set bit is found.)
 *
 * Byte ranges past the image size are an error (`BM_ERR_INVALID_OPTION`), not clamped: such a
 * write cannot land on the image, and a bitmap that silently ignored it would hide an image that
 * grew behind its back.
 */
export class DirtyBitmap {
  /** Image size in bytes. */
  readonly size: number;
  /** Bytes per bit: a power of two from {@link MIN_GRANULARITY} to {@link MAX_GRANULARITY}. */
  readonly granularity: number;
  /** Number of bits: `ceil(size / granularity)`, at most {@link MAX_BIT_COUNT}. */
  readonly bitCount: number;

  readonly #buffer: SharedArrayBuffer;
  readonly #words: Int32Array;
  readonly #levelStart: Int32Array;
  readonly #levelWords: Int32Array;
  readonly #top: number;
  /** Index of the top summary word: {@link changed} waits on it. */
  readonly #topIndex: number;
  /** Index of level 0's first word. */
  readonly #base: number;
  readonly #frozen: boolean;
  /** 1 / granularity: a multiply finds a byte's bit faster than a divide. */
  readonly #perByte: number;
  /**
   * Where this handle counts the bits it sets and clears: its thread's private slot (plain adds,
   * as only this thread writes it), the shared slot (Atomics.add) once the private ones are all
   * taken, or -1 until the handle first changes a bit.
   */
  #countIndex = -1;
  #succession: Succession | undefined;

  private constructor(size: number, granularity: number, layout: BitmapLayout, buffer: SharedArrayBuffer, frozen: boolean) {
    this.size = size;
    this.granularity = granularity;
    this.bitCount = layout.bitCount;
    this.#buffer = buffer;
    this.#words = new Int32Array(buffer);
    this.#levelStart = layout.levelStart;
    this.#levelWords = layout.levelWords;
    this.#top = layout.top;
    this.#topIndex = layout.levelWords[layout.top]! > 0 ? layout.levelStart[layout.top]! : QUIET_INDEX;
    this.#base = layout.levelStart[0]!;
    this.#frozen = frozen;
    this.#perByte = 1 / granularity;
  }

  /**
   * A new, clean bitmap for an image of `size` bytes, one bit per `granularity` bytes
   * (default {@link DEFAULT_GRANULARITY}). Throws `BM_ERR_INVALID_OPTION` on a granularity that is
   * not a power of two in range, or an image that would need more than {@link MAX_BIT_COUNT} bits.
   */
  static create(size: number, granularity: number = DEFAULT_GRANULARITY): DirtyBitmap {
    const layout = layoutFor(bitCountFor(size, granularity));
    return new DirtyBitmap(size, granularity, layout, new SharedArrayBuffer(layout.totalWords * 4), false);
  }

  /** Reopens a bitmap shared by {@link share} (on another thread, typically). */
  static fromShared(shared: SharedBitmap): DirtyBitmap {
    if (shared === null || typeof shared !== 'object' || !(shared.buffer instanceof SharedArrayBuffer)) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, 'not a shared bitmap: it has no SharedArrayBuffer');
    }
    const layout = layoutFor(bitCountFor(shared.size, shared.granularity));
    if (shared.buffer.byteLength !== layout.totalWords * 4) {
      throw new BitmapError(
        ErrorCode.BITMAP_GEOMETRY,
        `shared bitmap buffer holds ${shared.buffer.byteLength} bytes; size ${shared.size} at granularity ${shared.granularity} needs ${layout.totalWords * 4}`,
      );
    }
    return new DirtyBitmap(shared.size, shared.granularity, layout, shared.buffer, shared.frozen === true);
  }

  /**
   * A bitmap with the given level-0 words (bit i of word j is bit 32*j+i), as a file stores them.
   * Bits past `bitCount` in the last word are ignored.
   */
  static fromWords(size: number, granularity: number, words: Uint32Array | Int32Array): DirtyBitmap {
    const bitmap = DirtyBitmap.create(size, granularity);
    const n = bitmap.#levelWords[0]!;
    if (words.length !== n) {
      throw new BitmapError(ErrorCode.BITMAP_GEOMETRY, `${words.length} words given; ${bitmap.bitCount} bits need ${n}`);
    }
    const tail = bitmap.bitCount & 31;
    let added = 0;
    for (let w = 0; w < n; w++) {
      let v = words[w]! | 0;
      if (w === n - 1 && tail !== 0) v &= maskThrough(tail - 1);
      if (v !== 0) added += popcount32(bitmap.#orWord(w, v));
    }
    bitmap.#flushCount(added);
    return bitmap;
  }

  /** The bitmap as plain data to post to another thread; both sides then share the bits. */
  share(): SharedBitmap {
    return { buffer: this.#buffer, size: this.size, granularity: this.granularity, frozen: this.#frozen };
  }

  /** True for a frozen bitmap (from {@link snapshot} or {@link freeze}): it cannot change. */
  get frozen(): boolean {
    return this.#frozen;
  }

  /**
   * Bytes of shared memory the bitmap uses: the bits, about 1/31 more for the summary levels, and
   * 512 for the count's slots. At most 1.1 times the raw bits from 64 Ki bits (8 KiB) up; below,
   * the slots dominate.
   */
  get memoryBytes(): number {
    return this.#buffer.byteLength;
  }

  // ---- marking ----------------------------------------------------------------------------

  /**
   * Marks every bit the byte range touches. Length 0 marks nothing. A range reaching past the
   * image size throws `BM_ERR_INVALID_OPTION` and marks nothing.
   */
  mark(offset: number, length: number): void {
    const end = offset + length;
    if (!(offset >= 0 && length >= 0 && end <= this.size)) throw this.#byteRangeError(offset, length);
    if (length === 0) return;
    if (this.#frozen) throw frozenError();
    // Exact: the granularity is a power of two, so its inverse is too.
    const first = Math.floor(offset * this.#perByte);
    const last = Math.floor((end - 1) * this.#perByte);
    // The single-word test here, not in #setBits: that one is too big to be inlined.
    if (first >>> 5 === last >>> 5) this.#setBitsInWord(first, last);
    else this.#setBits(first, last);
  }

  /** Marks `count` bits from `firstBit`. */
  markBits(firstBit: number, count: number): void {
    this.#checkBitRange(firstBit, count);
    if (count === 0) return;
    if (this.#frozen) throw frozenError();
    this.#setBits(firstBit, firstBit + count - 1);
  }

  /** Marks every bit. */
  markAll(): void {
    if (this.#frozen) throw frozenError();
    if (this.bitCount > 0) this.#setBits(0, this.bitCount - 1);
  }

  /** Sets bits `first..last` (inclusive). */
  #setBits(first: number, last: number): void {
    const w0 = first >>> 5;
    const w1 = last >>> 5;
    if (w0 === w1) return this.#setBitsInWord(first, last);
    let added = popcount32(this.#orWord(w0, maskFrom(first & 31)));
    for (let w = w0 + 1; w < w1; w++) {
      added += popcount32(this.#orWord(w, -1));
      if (added >= COUNT_FLUSH_BITS) added = this.#flushCount(added);
    }
    added += popcount32(this.#orWord(w1, maskThrough(last & 31)));
    this.#flushCount(added);
  }

  /** The hot path, small enough to be inlined: bits `first..last` of one word (most writes). */
  #setBitsInWord(first: number, last: number): void {
    const newly = this.#orWord(first >>> 5, maskFrom(first & 31) & maskThrough(last & 31));
    if (newly !== 0) this.#flushCount(first === last ? 1 : popcount32(newly));
  }

  /** ORs `mask` into level-0 word `w`; returns the bits it newly set. The caller counts them. */
  #orWord(w: number, mask: number): number {
    const a = this.#words;
    const i = this.#base + w;
    // Already set: skip the locked RMW. A plain read is enough here, and Atomics.load is a call
    // that costs as much as the RMW on Node 20. A stale "set" cannot be read: the caller's write
    // to the image completed (through libuv's locks) after any clear that a copier ordered before
    // its read of that range, so this read sees that clear (invariant 1 of docs/architecture.md).
    if ((a[i]! & mask) === mask) return 0;
    const old = Atomics.or(a, i, mask);
    // Only the 0 → non-zero transition raises the summary: whoever made it raises it.
    if (old === 0) {
      if (this.#top > 0) this.#raiseSummary(1, w);
      else Atomics.notify(a, i);
    }
    return mask & ~old;
  }

  /**
   * Sets the summary bit for word `child` of level `level - 1`, and upwards while a summary word
   * goes from zero to non-zero. A word that was already non-zero had its own parent raised by
   * whoever made it non-zero. Raising the top word from zero wakes {@link changed}.
   */
  #raiseSummary(level: number, child: number): void {
    const a = this.#words;
    const starts = this.#levelStart;
    for (let k = level; k <= this.#top; k++) {
      const old = Atomics.or(a, starts[k]! + (child >>> 5), 1 << (child & 31));
      if (old !== 0) return;
      child >>>= 5;
    }
    Atomics.notify(a, this.#topIndex);
  }

  /** Adds a change to this handle's count slot. Returns 0. */
  #flushCount(delta: number): number {
    if (delta === 0) return 0;
    const a = this.#words;
    const i = this.#countIndex;
    // A plain add: no other thread writes a private slot. A slot counts what its thread set less
    // what it cleared, so one that mostly marks or mostly clears drifts far and wraps at 2^32;
    // the sum of all slots is still exact.
    if (i > SHARED_COUNT_INDEX) a[i] = a[i]! + delta;
    else if (i === SHARED_COUNT_INDEX) Atomics.add(a, i, delta);
    else {
      this.#countIndex = countSlotFor(this.#buffer, a);
      this.#flushCount(delta);
    }
    return 0;
  }

  // ---- clearing ---------------------------------------------------------------------------

  /**
   * Clears bits `firstBit .. firstBit+count-1` atomically and returns which of them were set:
   * bit i of the result (word i>>>5, bit i&31) is bit `firstBit + i`. A mark racing with it is
   * either in the result or still set afterwards, never lost. The copier calls this *before* it
   * reads the source (invariant 2 of docs/architecture.md) and marks the bits again if the copy fails.
   *
   * `into`, if given, receives the result instead of a new array (a hot loop then allocates
   * nothing): it needs at least `ceil(count / 32)` words, and those are zeroed first.
   */
  testAndClear(firstBit: number, count: number, into?: Uint32Array): Uint32Array {
    this.#checkBitRange(firstBit, count);
    if (this.#frozen) throw frozenError();
    const words = Math.ceil(count / 32);
    let out: Uint32Array;
    if (into === undefined) {
      out = new Uint32Array(words);
    } else {
      if (into.length < words) {
        throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${count} bits need ${words} words; the bitset given has ${into.length}`);
      }
      out = into.fill(0, 0, words);
    }
    if (count === 0) return out;
    const end = firstBit + count;
    const lastWord = (end - 1) >>> 5;
    let cleared = 0;
    for (let w = this.#nextDirtyWordIn(firstBit >>> 5, lastWord); w >= 0; w = this.#nextDirtyWordIn(w + 1, lastWord)) {
      let mask = -1;
      if (w * 32 < firstBit) mask &= maskFrom(firstBit & 31);
      if (w === lastWord) mask &= maskThrough((end - 1) & 31);
      const bits = this.#clearWord(w, mask);
      if (bits === 0) continue;
      depositBits(out, w * 32 - firstBit, bits);
      cleared += popcount32(bits);
      if (cleared >= COUNT_FLUSH_BITS) cleared = this.#flushCount(-cleared);
    }
    this.#flushCount(-cleared);
    return out;
  }

  /** Clears every bit. */
  clear(): void {
    if (this.#frozen) throw frozenError();
    let cleared = 0;
    for (let w = this.#nextDirtyWord(0); w >= 0; w = this.#nextDirtyWord(w + 1)) {
      cleared += popcount32(this.#clearWord(w, -1));
      if (cleared >= COUNT_FLUSH_BITS) cleared = this.#flushCount(-cleared);
    }
    this.#flushCount(-cleared);
  }

  /** Clears `mask` in level-0 word `w`; returns the bits that were set. Summaries stay (lazily cleared). */
  #clearWord(w: number, mask: number): number {
    const i = this.#base + w;
    const old = mask === -1 ? Atomics.exchange(this.#words, i, 0) : Atomics.and(this.#words, i, ~mask);
    return old & mask;
  }

  // ---- queries ----------------------------------------------------------------------------

  /** True when any bit the byte range touches is set. Length 0: false. Past the end: throws. */
  isDirty(offset: number, length: number): boolean {
    const end = offset + length;
    if (!(offset >= 0 && length >= 0 && end <= this.size)) throw this.#byteRangeError(offset, length);
    if (length === 0) return false;
    const g = this.granularity;
    const bit = this.#findSet(Math.floor(offset / g));
    return bit >= 0 && bit <= Math.floor((end - 1) / g);
  }

  /** True when every bit the byte range touches is set. Length 0: false. Past the end: throws. */
  allDirty(offset: number, length: number): boolean {
    const end = offset + length;
    if (!(offset >= 0 && length >= 0 && end <= this.size)) throw this.#byteRangeError(offset, length);
    if (length === 0) return false;
    const last = Math.floor((end - 1) * this.#perByte);
    return this.#findClear(Math.floor(offset * this.#perByte), last + 1) === last + 1;
  }

  /**
   * Number of set bits, read in O(1) (a sum of {@link PRIVATE_COUNT_SLOTS} + 1 words). Exact
   * whenever no mark or clear is under way; during one it may lag by the bits that operation has
   * changed but not yet counted (never below 0). Threads count in their own slots with plain
   * stores, so another thread's finished mark is counted here once something orders it before
   * this read: a message, or an Atomics operation both threads make on one word afterwards (as
   * the writer gate's active count does when the job proves ready).
   */
  count(): number {
    const a = this.#words;
    let n = 0;
    for (const i of COUNT_SLOT_INDEXES) n = (n + Atomics.load(a, i)) | 0;
    return n > 0 ? n : 0;
  }

  /** Dirty bytes: {@link count} times the granularity, less the part of the last bit past the image end. */
  dirtyBytes(): number {
    const n = this.count();
    if (n === 0) return 0;
    let bytes = n * this.granularity;
    const last = this.bitCount - 1;
    if ((Atomics.load(this.#words, this.#base + (last >>> 5)) >>> (last & 31)) & 1) {
      bytes -= this.bitCount * this.granularity - this.size;
    }
    return bytes;
  }

  /** The first set bit at or after `fromBit`, or -1 (no wrap-around). */
  nextDirty(fromBit: number): number {
    this.#checkBit(fromBit);
    return fromBit < this.bitCount ? this.#findSet(fromBit) : -1;
  }

  /**
   * The first clear bit at or after `fromBit`, or `limitBit` (default {@link bitCount}) when every
   * bit before it is set. The limit bounds the work over long dirty runs.
   */
  nextClean(fromBit: number, limitBit: number = this.bitCount): number {
    this.#checkBit(fromBit);
    this.#checkBit(limitBit);
    return this.#findClear(fromBit, limitBit);
  }

  /**
   * Coalesced dirty extents as `[offset, length]` byte pairs, clipped to the image size, each at
   * most `maxBytes` (but at least one granule). It reads the bits as it goes and clears nothing.
   * With `wrap`, after the end it goes on from bit 0 up to `fromBit`, like QEMU's mirror: a run
   * that straddles `fromBit` comes out as two extents.
   */
  extents(options: ExtentOptions = {}): IterableIterator<[offset: number, length: number]> {
    const fromBit = options.fromBit ?? 0;
    this.#checkBit(fromBit);
    const maxBits = this.#maxBitsFor(options.maxBytes ?? Infinity);
    return this.#extentsFrom(fromBit, maxBits, options.wrap === true);
  }

  *#extentsFrom(fromBit: number, maxBits: number, wrap: boolean): Generator<[number, number]> {
    yield* this.#runs(fromBit, this.bitCount, maxBits);
    if (wrap && fromBit > 0) yield* this.#runs(0, fromBit, maxBits);
  }

  *#runs(from: number, limit: number, maxBits: number): Generator<[number, number]> {
    let pos = from;
    while (pos < limit) {
      const start = this.#findSet(pos);
      if (start < 0 || start >= limit) return;
      const end = this.#findClear(start, Math.min(limit, start + maxBits));
      yield [start * this.granularity, this.bytesBetween(start, end)];
      pos = end;
    }
  }

  /** Bytes covered by bits `first .. end-1`, the last clipped to the image size. */
  bytesBetween(first: number, end: number): number {
    return Math.min(end * this.granularity, this.size) - first * this.granularity;
  }

  /** Bits per extent for a byte limit: whole granules, at least one. */
  #maxBitsFor(maxBytes: number): number {
    if (!(maxBytes > 0)) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `maxBytes must be positive, not ${maxBytes}`);
    return Math.max(1, Math.min(this.bitCount, Math.floor(maxBytes / this.granularity)));
  }

  /**
   * The first set bit at or after `fromBit`, or -1 (also past the end). Climbs the summary levels
   * while a word has nothing left, then descends through the first set summary bit. A summary bit
   * over a zero word is cleared, then the word is read again and the bit raised again if a mark
   * came in between: a marker sets the word before the summary, so either we see its word or it
   * sets the summary after our clear.
   *
   * The search reads words without Atomics (an Atomics.load is a call, about 10x a plain read):
   * what it finds is a hint. Whatever acts on it (testAndClear, freeze) clears with an atomic
   * read-modify-write and keeps only the bits that returns; a bit the search passed over stays set.
   */
  #findSet(fromBit: number): number {
    const a = this.#words;
    const starts = this.#levelStart;
    const lengths = this.#levelWords;
    let level = 0;
    let bit = fromBit;
    for (;;) {
      const w = bit >>> 5;
      if (w >= lengths[level]!) return -1;
      const x = a[starts[level]! + w]! & maskFrom(bit & 31);
      if (x === 0) {
        if (level === this.#top) return -1;
        level++;
        bit = w + 1;
        continue;
      }
      const found = w * 32 + lowestBit(x);
      if (level === 0) return found;
      if (a[starts[level - 1]! + found] !== 0) {
        level--;
        bit = found * 32;
        continue;
      }
      this.#dropStaleSummary(level, found);
      bit = found + 1;
    }
  }

  /** Clears the summary bit of word `child` of level `level - 1`, unless that word is non-zero again. */
  #dropStaleSummary(level: number, child: number): void {
    const a = this.#words;
    Atomics.and(a, this.#levelStart[level]! + (child >>> 5), ~(1 << (child & 31)));
    if (Atomics.load(a, this.#levelStart[level - 1]! + child) !== 0) this.#raiseSummary(level, child);
  }

  /**
   * The first non-zero level-0 word in `fromWord .. lastWord`, or -1. A short range is read word
   * by word: a summary search would climb past its end to find the next dirty word far away.
   */
  #nextDirtyWordIn(fromWord: number, lastWord: number): number {
    if (lastWord - fromWord < 32) {
      const a = this.#words;
      const base = this.#base;
      for (let w = fromWord; w <= lastWord; w++) if (a[base + w] !== 0) return w;
      return -1;
    }
    const w = this.#nextDirtyWord(fromWord);
    return w <= lastWord ? w : -1;
  }

  /** The first level-0 word at or after `fromWord` that is non-zero, or -1. */
  #nextDirtyWord(fromWord: number): number {
    const bit = this.#findSet(fromWord * 32);
    return bit < 0 ? -1 : bit >>> 5;
  }

  /** The first clear bit in `from .. limit-1`, or `limit`. Bits past bitCount are always clear. */
  #findClear(from: number, limit: number): number {
    if (from >= limit) return limit;
    const a = this.#words;
    const base = this.#base;
    let w = from >>> 5;
    let x = ~a[base + w]! & maskFrom(from & 31);
    for (;;) {
      if (x !== 0) {
        const bit = w * 32 + lowestBit(x);
        return bit < limit ? bit : limit;
      }
      w++;
      if (w * 32 >= limit) return limit;
      x = ~a[base + w]!;
    }
  }

  /** A copy of the level-0 words: bit i of word j is bit 32*j+i. */
  toWords(): Uint32Array {
    const n = this.#levelWords[0]!;
    const out = new Uint32Array(n);
    for (let w = this.#nextDirtyWord(0); w >= 0; w = this.#nextDirtyWord(w + 1)) {
      out[w] = Atomics.load(this.#words, this.#base + w);
    }
    return out;
  }

  // ---- whole-bitmap operations ------------------------------------------------------------

  /**
   * ORs `other`'s bits into this bitmap. Both must have the same size and granularity, else
   * `BM_ERR_BITMAP_GEOMETRY`. Costs O(dirty words of `other`).
   */
  merge(other: DirtyBitmap): void {
    this.#checkSameGeometry(other);
    if (this.#frozen) throw frozenError();
    if (other.#buffer === this.#buffer) return;
    let added = 0;
    for (let w = other.#nextDirtyWord(0); w >= 0; w = other.#nextDirtyWord(w + 1)) {
      const v = Atomics.load(other.#words, other.#base + w);
      if (v !== 0) added += popcount32(this.#orWord(w, v));
      if (added >= COUNT_FLUSH_BITS) added = this.#flushCount(added);
    }
    this.#flushCount(added);
  }

  /** A frozen copy of the bits as they are now; marking or clearing it throws `BM_ERR_BITMAP_STATE`. */
  snapshot(): DirtyBitmap {
    const copy = DirtyBitmap.create(this.size, this.granularity);
    copy.merge(this);
    return copy.#asFrozen();
  }

  /**
   * Moves every set bit into a new frozen bitmap, word by word with Atomics.exchange, so that
   * this bitmap (which writers keep marking through their handles) records only writes from now
   * on. Each bit is either in `frozen` or still (or again) set here: none is lost. Settle the
   * returned {@link Succession} with commit or abort; until then freezing again throws
   * `BM_ERR_BITMAP_STATE`.
   */
  freeze(): Succession {
    if (this.#frozen) throw frozenError();
    if (this.#succession?.state === 'pending') {
      throw new BitmapError(ErrorCode.BITMAP_STATE, 'the bitmap is already frozen for a job: commit or abort that succession first');
    }
    const moved = DirtyBitmap.create(this.size, this.granularity);
    let taken = 0;
    let movedCount = 0;
    for (let w = this.#nextDirtyWord(0); w >= 0; w = this.#nextDirtyWord(w + 1)) {
      const bits = this.#clearWord(w, -1);
      if (bits === 0) continue;
      moved.#orWord(w, bits);
      const n = popcount32(bits);
      movedCount += n;
      taken += n;
      if (taken >= COUNT_FLUSH_BITS) taken = this.#flushCount(-taken);
    }
    this.#flushCount(-taken);
    moved.#flushCount(movedCount);
    const succession = new BitmapSuccession(moved.#asFrozen(), this);
    this.#succession = succession;
    return succession;
  }

  /**
   * Resolves `true` as soon as the bitmap has dirty bits (at once if it has some now), `false`
   * after `timeoutMs` without any. It waits on the top summary word, and a marker notifies only
   * when it raises that word from zero, so marking stays cheap; summary bits left over zero words
   * are dropped first (searches drop most as they go, but after a drain by testAndClear alone,
   * the first call walks them all: about 1 s for 2^30 bits all cleared). It may resolve `true`
   * spuriously: check {@link count}.
   */
  async changed(timeoutMs: number): Promise<boolean> {
    if (!(timeoutMs >= 0)) throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `timeout must be at least 0 ms, not ${timeoutMs}`);
    if (this.count() > 0) return true;
    const a = this.#words;
    // An image of no bits waits on QUIET_INDEX, which stays 0.
    if (a[this.#topIndex] !== 0 && !this.#frozen) this.#pruneSummaries(this.#top, 0);
    return waitForChange(a, this.#topIndex, 0, timeoutMs);
  }

  /**
   * Drops every summary bit below word `word` of `level` whose words are all zero (O(set summary
   * bits)); returns whether that word is non-zero afterwards. Each drop rechecks its word, as in
   * {@link #findSet}, so a mark racing with it keeps its summary bits.
   */
  #pruneSummaries(level: number, word: number): boolean {
    const a = this.#words;
    const i = this.#levelStart[level]! + word;
    if (level > 0) {
      for (let x = a[i]!; x !== 0; x &= x - 1) {
        const child = word * 32 + lowestBit(x);
        if (!this.#pruneSummaries(level - 1, child)) this.#dropStaleSummary(level, child);
      }
    }
    return a[i] !== 0;
  }

  // ---- helpers ----------------------------------------------------------------------------

  /** This bitmap's words in a read-only handle (the object is private, so nobody else writes it). */
  #asFrozen(): DirtyBitmap {
    return new DirtyBitmap(this.size, this.granularity, layoutFor(this.bitCount), this.#buffer, true);
  }

  #checkSameGeometry(other: DirtyBitmap): void {
    if (other.size !== this.size || other.granularity !== this.granularity) {
      throw new BitmapError(
        ErrorCode.BITMAP_GEOMETRY,
        `bitmaps differ: ${this.size} bytes at granularity ${this.granularity} vs ${other.size} bytes at granularity ${other.granularity}`,
      );
    }
  }

  #checkBit(bit: number): void {
    if (!(Number.isInteger(bit) && bit >= 0 && bit <= this.bitCount)) {
      throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `bit ${bit} is outside 0..${this.bitCount}`);
    }
  }

  #checkBitRange(firstBit: number, count: number): void {
    if (!(Number.isInteger(firstBit) && Number.isInteger(count) && firstBit >= 0 && count >= 0 && firstBit + count <= this.bitCount)) {
      throw new InvalidArgumentError(
        ErrorCode.INVALID_OPTION,
        `bits ${firstBit} + ${count} reach outside the bitmap's ${this.bitCount} bits`,
      );
    }
  }

  #byteRangeError(offset: number, length: number): InvalidArgumentError {
    return new InvalidArgumentError(
      ErrorCode.INVALID_OPTION,
      `byte range ${offset} + ${length} is not inside the image of ${this.size} bytes`,
    );
  }
}

/** ORs the 32 bits `bits` into bitset `out` at bit position `at` (which may be below 0: the low bits are then dropped). */
function depositBits(out: Uint32Array, at: number, bits: number): void {
  if (at < 0) {
    bits >>>= -at;
    at = 0;
  }
  const i = at >>> 5;
  const shift = at & 31;
  out[i]! |= bits << shift;
  if (shift !== 0 && i + 1 < out.length) out[i + 1]! |= bits >>> (32 - shift);
}

/**
 * This thread's count slot in each bitmap it has counted in (module state is per thread). A
 * thread's handles share its slot, so reopening a bitmap often does not use up the private slots.
 */
const threadSlots = new WeakMap<SharedArrayBuffer, number>();

/** This thread's count slot in `buffer`: claimed the first time, the next private one or the shared one. */
function countSlotFor(buffer: SharedArrayBuffer, words: Int32Array): number {
  let slot = threadSlots.get(buffer);
  if (slot === undefined) {
    const k = Atomics.add(words, SLOT_CLAIM_INDEX, 1);
    slot = k >= 0 && k < PRIVATE_COUNT_SLOTS ? COUNT_SLOT_INDEXES[1 + k]! : SHARED_COUNT_INDEX;
    threadSlots.set(buffer, slot);
  }
  return slot;
}

function frozenError(): BitmapError {
  return new BitmapError(ErrorCode.BITMAP_STATE, 'the bitmap is frozen: it cannot be marked or cleared');
}

/** Bit tricks on 32-bit words: the bitmap never loops over single bits. */

/** Number of set bits in a 32-bit word (SWAR popcount). */
export function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/** Index of the lowest set bit of a non-zero word (count of trailing zeros). */
export function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** Index of the highest set bit of a non-zero word. */
export function highestBit(x: number): number {
  return 31 - Math.clz32(x);
}

/** The mask of bits `from..31` of a word (`from` in 0..31). */
export function maskFrom(from: number): number {
  return -1 << from;
}

/** The mask of bits `0..to` of a word (`to` in 0..31, inclusive). */
export function maskThrough(to: number): number {
  return -1 >>> (31 - to);
}

/** Index of the lowest set bit in the first `words` words of a bitset, or -1 when none is set. */
export function firstSetIn(bits: Uint32Array, words = bits.length): number {
  for (let i = 0; i < words; i++) {
    const x = bits[i]!;
    if (x !== 0) return i * 32 + lowestBit(x);
  }
  return -1;
}

/** Index of the highest set bit in the first `words` words of a bitset, or -1 when none is set. */
export function lastSetIn(bits: Uint32Array, words = bits.length): number {
  for (let i = words - 1; i >= 0; i--) {
    const x = bits[i]!;
    if (x !== 0) return i * 32 + highestBit(x);
  }
  return -1;
}

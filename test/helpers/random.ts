export { seededRandom } from '../fixtures/prng.mjs';

/** A whole number in `0 .. n-1` from `random`. */
export function randomInt(random: () => number, n: number): number {
  return Math.floor(random() * n);
}

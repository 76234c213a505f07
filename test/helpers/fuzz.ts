import fc from 'fast-check';

/**
 * Settings every fuzz property shares. In `npm test` the seed is fixed and the case count small,
 * so a run is repeatable and quick; `npm run test:fuzz` sets BLOCKMIRROR_FUZZ_RUNS higher (and
 * BLOCKMIRROR_FUZZ_SEED to explore other inputs). A failure prints fast-check's seed and path,
 * which reproduce it when given back through these variables.
 */
export const FUZZ_SEED = Number(process.env.BLOCKMIRROR_FUZZ_SEED ?? 20261201);

/** Cases per property: `scale` times the base count (cheap properties take more). */
export function fuzzRuns(scale = 1): number {
  const base = Number(process.env.BLOCKMIRROR_FUZZ_RUNS ?? 100);
  return Math.max(1, Math.round(base * scale));
}

/** Parameters for `fc.assert`: the fixed seed, the run count, and no shrinking past a time bound. */
export function fuzzParams<T>(scale = 1): fc.Parameters<T> {
  return { seed: FUZZ_SEED, numRuns: fuzzRuns(scale), interruptAfterTimeLimit: 60_000, endOnFailure: false };
}

/** Bytes a misbehaving peer might send: random, or random with plausible prefixes mixed in. */
export function peerBytes(maxLength = 512, prefixes: readonly Uint8Array[] = []): fc.Arbitrary<Uint8Array> {
  const random = fc.uint8Array({ maxLength });
  if (prefixes.length === 0) return random;
  return fc.oneof(
    random,
    fc.tuple(fc.constantFrom(...prefixes), random).map(([p, r]) => concat(p, r)),
  );
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * Properties of JsonStream for any input: every push returns (within a deadline: the streams run
 * in a worker thread that is stopped if it loops), the text held stays within the limit, chunking
 * changes nothing (the chunks' concatenation gives the same items as the whole), and valid
 * objects among garbage still come out, whole and in order.
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import type { JsonItem } from '../../src/control/qmp/JsonStream.js';
import { fuzzParams } from '../helpers/fuzz.js';
import { JsonStreamWorker } from '../helpers/jsonStreamWorker.js';

const worker = new JsonStreamWorker();
afterAll(() => worker.close());

/** Longest push accepted, in ms: the inputs are a few KiB, so a push far slower than this is looping or quadratic. */
const PUSH_BOUND_MS = 500;

/** Characters that matter to the scanner, and the ones JavaScript's `\s` confuses with whitespace. */
const interesting = fc.constantFrom(...'{}[]"\\ \t\r\n\v\f\u00a0\u2028\u2029\ufeff\u0000,:-+.0123456789aeflnrstu', '\ud83d', '\ude00', 'true', 'null', '"x"', '{"a":1}');

/** Strings of every kind: arbitrary UTF-16 (lone surrogates too), scanner-heavy, and JSON-like. */
const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 300 }),
  fc.string({ unit: interesting, maxLength: 300 }),
  fc.json({ maxDepth: 3 }).map((j) => j.repeat(3)),
  fc.string({ unit: 'grapheme', maxLength: 100 }),
);

/** `text` cut at arbitrary places (possibly between the halves of a surrogate pair). */
function chunked(text: fc.Arbitrary<string>): fc.Arbitrary<string[]> {
  return text.chain((t) =>
    fc.uniqueArray(fc.integer({ min: 0, max: t.length }), { maxLength: 12 }).map((cuts) => {
      const at = [0, ...cuts.sort((a, b) => a - b), t.length];
      return at.slice(1).map((end, i) => t.slice(at[i], end));
    }),
  );
}

function values(items: readonly JsonItem[]): unknown[] {
  return items.filter((i) => i.ok).map((i) => (i as { value: unknown }).value);
}

describe('JsonStream fuzz', () => {
  it('returns from every push, holds at most maxBytes, and chunking changes nothing', { timeout: 90_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(chunked(anyText), fc.constantFrom(16, 64, 1 << 20), async (chunks, maxBytes) => {
        const r = await worker.feed(chunks, { maxBytes });
        expect(r.maxPushMs).toBeLessThan(PUSH_BOUND_MS);
        expect(r.maxBuffered).toBeLessThanOrEqual(maxBytes);
        expect(r.items).toEqual(r.whole);
        for (const item of r.items) if (!item.ok) expect(item.error).toMatch(/^(JSON parse error, |QMP input must be a JSON object$)/);
      }),
      fuzzParams(5),
    );
  });

  it('a quarter megabyte of anything is scanned quickly and dropped', { timeout: 90_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ unit: interesting, minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 8 }), async (pattern, pieces) => {
        const big = pattern.repeat(Math.ceil((256 << 10) / pattern.length));
        const size = Math.ceil(big.length / pieces);
        const chunks = Array.from({ length: pieces }, (_, i) => big.slice(i * size, (i + 1) * size));
        const r = await worker.feed(chunks, { maxBytes: 4096 }, { items: false });
        expect(r.maxBuffered).toBeLessThanOrEqual(4096);
        expect(r.maxPushMs).toBeLessThan(2000);
        expect(r.same).toBe(true);
      }),
      fuzzParams(0.1),
    );
  });

  it('valid objects interleaved with garbage all come out, whole and in order', { timeout: 90_000 }, async () => {
    // Garbage here cannot open a value or a string (no '{', '[' or '"'), so it cannot swallow what follows.
    const garbage = fc.string({ unit: fc.oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), interesting), maxLength: 40 }).map((g) => g.replace(/[{["]/g, '').replace(/[\ud800-\udbff]$/, ''));
    const object = fc.object({ maxDepth: 3 }).map((o) => JSON.parse(JSON.stringify(o)) as Record<string, unknown>);
    const input = fc.array(fc.tuple(garbage, object), { maxLength: 8 }).chain((pairs) =>
      garbage.map((tail) => ({ objects: pairs.map(([, o]) => o), text: `${pairs.map(([g, o]) => g + JSON.stringify(o)).join('')}${tail} ` })),
    );
    await fc.assert(
      fc.asyncProperty(
        input.chain(({ objects, text }) => chunked(fc.constant(text)).map((chunks) => ({ objects, chunks }))),
        async ({ objects, chunks }) => {
          const r = await worker.feed(chunks);
          expect(values(r.items)).toEqual(objects);
          expect(r.items).toEqual(r.whole);
        },
      ),
      fuzzParams(3),
    );
  });
});

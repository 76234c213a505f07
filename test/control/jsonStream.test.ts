/**
 * JsonStream against input that is not JSON: characters that JavaScript's `\s` takes for
 * whitespace but RFC 8259 does not (a vertical tab once made the scan stand still forever, at
 * 100 % CPU), text that never ends, and more items than the reader wants at once. Every feed
 * runs in a worker thread with a deadline, so a scan that loops fails here instead of hanging.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { JsonStream, MAX_JSON_BYTES, type JsonItem } from '../../src/control/qmp/JsonStream.js';
import { JsonStreamWorker } from '../helpers/jsonStreamWorker.js';

const worker = new JsonStreamWorker();
afterAll(() => worker.close());

const VERSION = '{"execute": "query-version"}';
const VALID = { ok: true, value: { execute: 'query-version' } };

/** The items' values and errors, for comparing in one line. */
function summary(items: readonly JsonItem[]): unknown[] {
  return items.map((i) => (i.ok ? i.value : i.error));
}

/** Not JSON whitespace, though JavaScript's `\s` matches each. */
const notWhitespace: ReadonlyArray<[string, string]> = [
  ['a vertical tab', '\v'],
  ['a form feed', '\f'],
  ['a no-break space (U+00A0)', '\u00a0'],
  ['a line separator (U+2028)', '\u2028'],
];

describe('JsonStream: characters that are not JSON whitespace', () => {
  it.each(notWhitespace)('%s alone is an error, answered at once', { timeout: 10_000 }, async (_what, c) => {
    const { items } = await worker.feed([c]);
    expect(items).toHaveLength(1);
    expect(items[0]!.ok).toBe(false);
    expect((items[0] as { error: string }).error).toMatch(/^JSON parse error, stray '\\u[0-9a-f]{4}'$/);
  });

  it.each(notWhitespace)('%s before, between and after commands: errors, then each command', { timeout: 10_000 }, async (_what, c) => {
    const { items } = await worker.feed([`${c}${VERSION}${c}${c}\n${VERSION}${c}`, ` ${VERSION}`]);
    expect(items.map((i) => i.ok)).toEqual([false, true, false, true, false, true]);
    expect(items.filter((i) => i.ok)).toEqual([VALID, VALID, VALID]);
  });

  it.each(notWhitespace)('%s ends a keyword and is reported after it', { timeout: 10_000 }, async (_what, c) => {
    const { items } = await worker.feed([`nope${c}true${VERSION}`]);
    expect(summary(items)).toEqual([
      "JSON parse error, invalid keyword 'nope'",
      expect.stringMatching(/^JSON parse error, stray /),
      'QMP input must be a JSON object',
      VALID.value,
    ]);
  });

  it('inside an object it makes that object an error, and the next one still parses', { timeout: 10_000 }, async () => {
    const { items } = await worker.feed([`{"execute":\v"query-version"}${VERSION}`]);
    expect(items[0]!.ok).toBe(false);
    expect(items[1]).toEqual(VALID);
  });

  it('a run of stray characters is one error, however it is split', { timeout: 10_000 }, async () => {
    const { items } = await worker.feed(['\v\f\u00a0', '\u2028\u0001', `\v${VERSION}`]);
    expect(summary(items)).toEqual(["JSON parse error, stray '\\u000b'", VALID.value]);
  });

  it('RFC 8259 whitespace (space, tab, LF, CR) is skipped without an error', { timeout: 10_000 }, async () => {
    const { items } = await worker.feed([` \t\r\n${VERSION} \t\r\n`]);
    expect(items).toEqual([VALID]);
  });
});

describe('JsonStream: what it holds', () => {
  it('a bare word that never ends is answered once past the limit, and not kept', { timeout: 10_000 }, async () => {
    const { items, maxBuffered } = await worker.feed(['x'.repeat(3000), 'x'.repeat(3000), `y ${VERSION}`], { maxBytes: 1000 });
    expect(summary(items)).toEqual(['JSON parse error, input longer than 1000 bytes', VALID.value]);
    expect(maxBuffered).toBeLessThanOrEqual(1000);
  });

  it('an unterminated string outside any value is answered past the limit and dropped to its closing quote', { timeout: 10_000 }, async () => {
    const { items, maxBuffered } = await worker.feed(['"', 'a'.repeat(5000), '\\"', 'b'.repeat(5000), `" ${VERSION}`], { maxBytes: 1000 });
    expect(summary(items)).toEqual(['JSON parse error, input longer than 1000 bytes', VALID.value]);
    expect(maxBuffered).toBeLessThanOrEqual(1000);
  });

  it('an object longer than the limit is answered when it passes the limit, and its end still found', { timeout: 10_000 }, async () => {
    const s = new JsonStream({ maxBytes: 100 });
    expect(s.push(`{"id": "${'x'.repeat(200)}`)).toEqual([{ ok: false, error: 'JSON parse error, input longer than 100 bytes' }]);
    expect(s.buffered).toBe(0);
    expect(s.push(`", "more": [{}]}${VERSION}`)).toEqual([VALID]);
  });

  it('the default limit is MAX_JSON_BYTES, whatever the chunking', { timeout: 20_000 }, async () => {
    const chunk = 'z'.repeat(64 << 10);
    const chunks = Array.from({ length: (2 * MAX_JSON_BYTES) / chunk.length }, () => chunk);
    const { items, maxBuffered } = await worker.feed([...chunks, ' 1 '], {}, { deadlineMs: 15_000 });
    expect(summary(items)).toEqual([`JSON parse error, input longer than ${MAX_JSON_BYTES} bytes`, 'QMP input must be a JSON object']);
    expect(maxBuffered).toBeLessThanOrEqual(MAX_JSON_BYTES);
  });

  it('push stops after maxItems; the rest waits unscanned and push("") goes on', () => {
    const s = new JsonStream();
    const text = `${VERSION}\v${VERSION}nope ${VERSION}`;
    expect(summary(s.push(text, 2))).toEqual([VALID.value, "JSON parse error, stray '\\u000b'"]);
    expect(s.unscanned).toBeGreaterThan(0);
    expect(summary(s.push('', 1))).toEqual([VALID.value]);
    expect(summary(s.push('', 0))).toEqual([]);
    expect(summary(s.push(''))).toEqual(["JSON parse error, invalid keyword 'nope'", VALID.value]);
    expect(s.unscanned).toBe(0);
    expect(s.buffered).toBe(0);
  });

  it('an item split by maxItems in the middle of a value comes out whole', () => {
    const s = new JsonStream();
    expect(s.push(`1 {"a": [1, `, 1)).toEqual([{ ok: false, error: 'QMP input must be a JSON object' }]);
    expect(s.push('2]}', 1)).toEqual([{ ok: true, value: { a: [1, 2] } }]);
  });
});

describe('JsonStream: strings QEMU refuses', () => {
  it('refuses \\u0000 and lone surrogates, in values and in member names, and takes the next object', () => {
    const s = new JsonStream();
    const items = s.push(
      [
        '{"execute": "blockdev-add", "arguments": {"filename": "/a\\u0000b"}}',
        '{"execute": "x", "arguments": {"name": "\\ud800"}}',
        '{"execute": "x", "arguments": {"\\udc00x": 1}}',
        '[["\\ud83d\\ude00", "\\u00e9"]]',
        VERSION,
      ].join(''),
    );
    expect(summary(items)).toEqual([
      'JSON parse error, \\u0000 is not supported',
      "JSON parse error, \\ud800 is not a valid Unicode character",
      "JSON parse error, \\udc00 is not a valid Unicode character",
      [['\ud83d\ude00', '\u00e9']],
      VALID.value,
    ]);
  });

  it('checks a huge array without overflowing the stack', () => {
    const s = new JsonStream();
    const big = `[${Array.from({ length: 100_000 }, () => '"\\u00e9"').join(',')}, "\\ud800"]`;
    expect(s.push(big)).toEqual([{ ok: false, error: 'JSON parse error, \\ud800 is not a valid Unicode character' }]);
  });
});

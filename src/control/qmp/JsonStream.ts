/**
 * Splits a QMP byte stream into JSON texts the way QEMU's streamer does: a value ends where its
 * outermost brace or bracket closes, whatever the line breaks (QMP clients may send several objects
 * on a line, or one over several lines). Text outside any object or array is taken a token at a
 * time, so `not json` answers two errors and the stream goes on.
 *
 * Hostile input is bounded: every character is looked at once (each step of the scan consumes at
 * least one), whitespace is exactly RFC 8259's (space, tab, LF, CR: a vertical tab, a form feed
 * or a Unicode space is an error like any other stray character), and no item may hold more than
 * `maxBytes` characters: one that grows past it is answered with an error at once and the rest of
 * it is followed to its end without being kept. So the text a stream holds between pushes never
 * exceeds `maxBytes`, whatever the client sends.
 */

/**
 * Longest JSON text accepted, in characters (QEMU's limit is 64 MiB; nothing a client should send
 * comes close). A longer value, bare token or string is answered with an error and dropped.
 */
export const MAX_JSON_BYTES = 1 << 20;
/** Deepest nesting accepted (QEMU's limit). */
export const MAX_NESTING = 1024;
/** How much of a bad token an error message quotes. */
const QUOTED = 64;

/** One piece of input: a parsed value, or why the text could not be parsed. */
export type JsonItem = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: string };

/** Limits of one {@link JsonStream}. */
export interface JsonStreamOptions {
  /** Longest item kept, in characters (default {@link MAX_JSON_BYTES}). */
  readonly maxBytes?: number;
  /** Deepest nesting accepted (default {@link MAX_NESTING}). */
  readonly maxNesting?: number;
}

/**
 * What the scanner is in the middle of: nothing (between items), an object or array, a string or
 * a word (a keyword or number) outside any value, or a run of stray characters already answered.
 */
type Mode = 'between' | 'value' | 'string' | 'word' | 'stray';

const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

/** RFC 8259's whitespace, and nothing else (`\s` would take \v, \f and the Unicode spaces). */
function isJsonSpace(c: number): boolean {
  return c === SPACE || c === LF || c === CR || c === TAB;
}

/** Characters of JSON keywords and numbers: a word outside a value runs while they last. */
function isWordChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x2b || c === 0x2d || c === 0x2e;
}

/** Neither whitespace, nor a bracket or quote, nor a word character: never part of a JSON text outside a value. */
function isStray(c: number): boolean {
  return !isJsonSpace(c) && !isWordChar(c) && c !== QUOTE && c !== OPEN_BRACE && c !== CLOSE_BRACE && c !== OPEN_BRACKET && c !== CLOSE_BRACKET;
}

export class JsonStream {
  readonly #maxBytes: number;
  readonly #maxNesting: number;
  /** The current item's text, kept from its first character, while it is still wanted. */
  #text = '';
  /** How much of `#text` has been scanned. */
  #scanned = 0;
  #mode: Mode = 'between';
  /** The current item has been answered with an error already: follow it to its end, keep nothing. */
  #dropping = false;
  #depth = 0;
  #inString = false;
  #escaped = false;

  constructor(options: JsonStreamOptions = {}) {
    this.#maxBytes = options.maxBytes ?? MAX_JSON_BYTES;
    this.#maxNesting = options.maxNesting ?? MAX_NESTING;
  }

  /**
   * Characters held: the item not yet complete (at most the `maxBytes` limit) and any text not
   * yet scanned because `push` stopped at `maxItems`.
   */
  get buffered(): number {
    return this.#text.length;
  }

  /** Characters fed but not yet scanned (`push` stopped at `maxItems`): `push('')` goes on. */
  get unscanned(): number {
    return this.#text.length - this.#scanned;
  }

  /**
   * Feeds more text; returns the values (and errors) it completes, in order. At most `maxItems`
   * are returned: the scan stops after the last of them and the rest of the text waits, unscanned,
   * for the next push (a QMP session that has as many commands queued as it allows takes no more).
   */
  push(chunk: string, maxItems = Infinity): JsonItem[] {
    const out: JsonItem[] = [];
    const text = this.#text + chunk;
    // Where the item being kept starts in `text` (it is kept from index 0 across pushes), or -1.
    let start = this.#keeping() ? 0 : -1;
    let i = this.#scanned;
    for (; i < text.length; i++) {
      if (out.length >= maxItems) break;
      const c = text.charCodeAt(i);
      switch (this.#mode) {
        case 'between':
          if (isJsonSpace(c)) break;
          if (c === OPEN_BRACE || c === OPEN_BRACKET) {
            this.#begin('value');
            this.#depth = 1;
            start = i;
          } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
            out.push({ ok: false, error: `JSON parse error, stray '${quote(text[i]!)}'` });
          } else if (c === QUOTE) {
            this.#begin('string');
            start = i;
          } else if (isWordChar(c)) {
            this.#begin('word');
            start = i;
          } else {
            // One error for a run of stray characters, answered at its first: a client that sends
            // a megabyte of form feeds gets one reply, not a million.
            out.push({ ok: false, error: `JSON parse error, stray '${quote(text[i]!)}'` });
            this.#mode = 'stray';
          }
          break;
        case 'stray':
          if (isStray(c)) break;
          this.#mode = 'between';
          i--; // look at this character again, as the start of what follows the run
          break;
        case 'word':
          if (isWordChar(c)) {
            if (this.#tooLong(start, i, out)) start = -1;
            break;
          }
          if (!this.#dropping) out.push(parseBare(text.slice(start, i)));
          this.#end();
          start = -1;
          i--; // the character after a word starts the next item
          break;
        case 'string':
          if (this.#tooLong(start, i, out)) start = -1;
          if (this.#escaped) this.#escaped = false;
          else if (c === BACKSLASH) this.#escaped = true;
          else if (c === QUOTE) {
            if (!this.#dropping) out.push(parseBare(text.slice(start, i + 1)));
            this.#end();
            start = -1;
          }
          break;
        case 'value':
          if (this.#tooLong(start, i, out)) start = -1;
          if (this.#inString) {
            if (this.#escaped) this.#escaped = false;
            else if (c === BACKSLASH) this.#escaped = true;
            else if (c === QUOTE) this.#inString = false;
          } else if (c === QUOTE) {
            this.#inString = true;
          } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
            if (++this.#depth > this.#maxNesting && !this.#dropping) {
              out.push({ ok: false, error: 'JSON parse error, nesting too deep' });
              this.#dropping = true;
              start = -1;
            }
          } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
            if (--this.#depth === 0) {
              if (!this.#dropping) out.push(parse(text.slice(start, i + 1)));
              this.#end();
              start = -1;
            }
          }
          break;
      }
    }
    if (start >= 0) {
      this.#text = text.slice(start);
      this.#scanned = i - start;
    } else {
      // Nothing to keep but what was not scanned yet (empty unless the scan stopped at maxItems).
      this.#text = i < text.length ? text.slice(i) : '';
      this.#scanned = 0;
    }
    return out;
  }

  /** True while an item is being collected and kept (its text is needed once it ends). */
  #keeping(): boolean {
    return (this.#mode === 'value' || this.#mode === 'string' || this.#mode === 'word') && !this.#dropping;
  }

  /**
   * Past the limit, the item is answered now (as QEMU answers an over-long input) and dropped:
   * only its end is looked for. True when it has just been dropped.
   */
  #tooLong(start: number, i: number, out: JsonItem[]): boolean {
    if (this.#dropping || i - start + 1 <= this.#maxBytes) return false;
    out.push({ ok: false, error: `JSON parse error, input longer than ${this.#maxBytes} bytes` });
    this.#dropping = true;
    return true;
  }

  #begin(mode: Mode): void {
    this.#mode = mode;
    this.#dropping = false;
    this.#depth = 0;
    this.#inString = false;
    this.#escaped = false;
  }

  #end(): void {
    this.#begin('between');
  }
}

/** A character for an error message: printable ASCII as is, anything else as a \u escape. */
function quote(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f ? text[i] : `\\u${c.toString(16).padStart(4, '0')}`;
  }
  return out;
}

function parse(source: string): JsonItem {
  let value: unknown;
  try {
    value = JSON.parse(source) as unknown;
  } catch (err) {
    return { ok: false, error: `JSON parse error, ${(err as Error).message}` };
  }
  // Only a \u escape puts a NUL or a lone surrogate in a string (the socket's UTF-8 decoder makes
  // neither, and JSON refuses raw control characters), so most texts need no second look.
  if (source.includes('\\u')) {
    const bad = badString(value);
    if (bad !== undefined) return { ok: false, error: bad };
  }
  return { ok: true, value };
}

/** Half of a surrogate pair without its other half: not a character, in no encoding. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * Why a string in `value` (a member name or a value) is refused, as QEMU's parser refuses it: a
 * NUL (it ends a C string: a file name would name another file) or a lone surrogate (no UTF-8
 * for it; names built from it could not be written to a file or an NBD reply).
 */
function badString(value: unknown): string | undefined {
  const todo: unknown[] = [value];
  while (todo.length > 0) {
    const v = todo.pop();
    const strings = typeof v === 'string' ? [v] : v !== null && typeof v === 'object' ? Object.keys(v) : [];
    if (v !== null && typeof v === 'object') for (const member of Object.values(v)) todo.push(member); // no spread: an array may be huge
    for (const s of strings) {
      if (s.includes('\0')) return 'JSON parse error, \\u0000 is not supported';
      const lone = LONE_SURROGATE.exec(s);
      if (lone) return `JSON parse error, ${quote(lone[0])} is not a valid Unicode character`;
    }
  }
  return undefined;
}

/** A JSON number, or one of JSON's three keywords: the valid words (checked without JSON.parse). */
const JSON_WORD = /^(?:true|false|null|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)$/;

/**
 * A word or string outside any value: valid JSON is still not a QMP command. Words are matched,
 * not parsed: a thrown exception per bad word would make a flood of them expensive.
 */
function parseBare(token: string): JsonItem {
  if (token.startsWith('"') ? isJsonString(token) : JSON_WORD.test(token)) return { ok: false, error: 'QMP input must be a JSON object' };
  return { ok: false, error: `JSON parse error, invalid keyword '${quote(token.slice(0, QUOTED))}'` };
}

function isJsonString(token: string): boolean {
  try {
    JSON.parse(token);
    return true;
  } catch {
    return false;
  }
}

/**
 * Splits a QMP byte stream into JSON texts the way QEMU's streamer does: a value ends where its
 * outermost brace or bracket closes, whatever the line breaks (QMP clients may send several objects
 * on a line, or one over several lines). Text outside any object or array is taken a token at a
 * time, so `not json` answers two errors and the stream goes on.
 */

/** Longest JSON text accepted (QEMU's limit is 64 MiB; nothing a client should send comes close). */
export const MAX_JSON_BYTES = 1 << 20;
/** Deepest nesting accepted (QEMU's limit). */
export const MAX_NESTING = 1024;

/** One piece of input: a parsed value, or why the text could not be parsed. */
export type JsonItem = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: string };

export class JsonStream {
  #text = '';
  #depth = 0;
  #inString = false;
  #escaped = false;
  /** Where the value being collected started, or -1 between values. */
  #start = -1;
  #scanned = 0;
  #failed: string | undefined;

  /** Feeds more text; returns the values (and errors) it completes, in order. */
  push(chunk: string): JsonItem[] {
    this.#text += chunk;
    const out: JsonItem[] = [];
    let i = this.#scanned;
    const text = this.#text;
    for (; i < text.length; i++) {
      const c = text[i]!;
      if (this.#start < 0) {
        if (c === ' ' || c === '\t' || c === '\r' || c === '\n') continue;
        if (c === '{' || c === '[') {
          this.#start = i;
          this.#depth = 1;
          continue;
        }
        if (c === '}' || c === ']') {
          out.push({ ok: false, error: `JSON parse error, stray '${c}'` });
          continue;
        }
        // A bare token (a keyword, a number, a string): read to its end.
        const end = tokenEnd(text, i);
        if (end < 0) break; // incomplete: wait for more
        out.push(parseBare(text.slice(i, end)));
        i = end - 1;
        continue;
      }
      if (i - this.#start > MAX_JSON_BYTES) {
        // Too long: it is answered with an error once it ends (QEMU's limit works the same way);
        // meanwhile only its nesting is followed, and its text dropped.
        this.#failed ??= `JSON parse error, input longer than ${MAX_JSON_BYTES} bytes`;
        this.#start = i;
      }
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (c === '\\') this.#escaped = true;
        else if (c === '"') this.#inString = false;
        continue;
      }
      if (c === '"') this.#inString = true;
      else if (c === '{' || c === '[') {
        if (++this.#depth > MAX_NESTING) this.#failed ??= 'JSON parse error, nesting too deep';
      } else if (c === '}' || c === ']') {
        if (--this.#depth === 0) {
          out.push(this.#finish(text.slice(this.#start, i + 1)));
          this.#start = -1;
        }
      }
    }
    if (this.#start < 0) {
      this.#text = text.slice(i);
      this.#scanned = 0;
    } else {
      this.#text = text.slice(this.#start);
      this.#scanned = i - this.#start;
      this.#start = 0;
    }
    return out;
  }

  #finish(source: string): JsonItem {
    const failed = this.#failed;
    this.#reset();
    if (failed) return { ok: false, error: failed };
    try {
      return { ok: true, value: JSON.parse(source) as unknown };
    } catch (err) {
      return { ok: false, error: `JSON parse error, ${(err as Error).message}` };
    }
  }

  #reset(): void {
    this.#depth = 0;
    this.#inString = false;
    this.#escaped = false;
    this.#start = -1;
    this.#failed = undefined;
  }
}

/** End (exclusive) of the bare token starting at `i`, or -1 when it may go on in the next chunk. */
function tokenEnd(text: string, i: number): number {
  if (text[i] === '"') {
    for (let j = i + 1, escaped = false; j < text.length; j++) {
      if (escaped) escaped = false;
      else if (text[j] === '\\') escaped = true;
      else if (text[j] === '"') return j + 1;
    }
    return -1;
  }
  for (let j = i; j < text.length; j++) if (/[\s{}[\]"]/.test(text[j]!)) return j;
  return -1;
}

function parseBare(token: string): JsonItem {
  try {
    JSON.parse(token);
    return { ok: false, error: 'QMP input must be a JSON object' };
  } catch {
    return { ok: false, error: `JSON parse error, invalid keyword '${token.slice(0, 64)}'` };
  }
}

/**
 * QEMU's command-line option syntax (util/keyval.c, util/qemu-option.c): `key=value,key=value`,
 * `,,` for a literal comma in a value, dotted keys for nested objects (`server.path=P`) and
 * numeric keys for lists (`bitmaps.0=a`). Every value stays a string; the schema check converts
 * (see schema.ts `keyval` mode). A JSON object (`--blockdev '{"driver": ...}'`) is taken as is.
 */
import { MAX_NESTING } from './JsonStream.js';
import { QmpError } from './QmpError.js';

/** Deepest dotted key accepted (`a.b.c` is 3): the same bound as QMP's JSON nesting. */
const MAX_KEY_DEPTH = MAX_NESTING;

/**
 * Parses an option argument. `impliedKey` names the key of a first item without `=` (QEMU's
 * `--chardev socket,...` is `backend=socket`); elsewhere an item without `=` is refused.
 */
export function parseKeyval(text: string, impliedKey?: string): Record<string, unknown> {
  if (text.trimStart().startsWith('{')) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new QmpError(`JSON parse error, ${(err as Error).message}`);
    }
    return value as Record<string, unknown>;
  }
  const root: Record<string, unknown> = {};
  const items = splitItems(text);
  items.forEach((item, index) => {
    const eq = item.indexOf('=');
    let key: string;
    let value: string;
    if (eq < 0) {
      if (index === 0 && impliedKey) {
        key = impliedKey;
        value = item;
      } else {
        throw new QmpError(`Expected '=' after parameter '${item}'`);
      }
    } else {
      key = item.slice(0, eq);
      value = item.slice(eq + 1);
    }
    if (!/^[A-Za-z0-9_.-]+$/.test(key) || key.split('.').some((p) => p === '')) throw new QmpError(`Invalid parameter '${key}'`);
    setPath(root, key.split('.'), value, key);
  });
  // The root is the option's object whatever its keys (QEMU's is a dict): `0=a` is member '0', not a list.
  for (const k of Object.keys(root)) define(root, k, listify(root[k]));
  return root;
}

/** Splits at single commas; `,,` is a comma inside a value. */
function splitItems(text: string): string[] {
  const items: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === ',') {
      if (text[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      items.push(cur);
      cur = '';
      continue;
    }
    cur += c;
  }
  items.push(cur);
  return items.filter((s, i) => s !== '' || i < items.length - 1);
}

/**
 * Sets `root`'s member at the dotted `parts`. Only own members are looked at and members are
 * defined, never assigned: a key is data, so `__proto__.x=1` is a member named `__proto__` (that
 * the schema refuses), not a write to Object.prototype, and `toString=x` is not "set more than once".
 */
function setPath(root: Record<string, unknown>, parts: readonly string[], value: string, key: string): void {
  if (parts.length > MAX_KEY_DEPTH) throw new QmpError(`Parameter '${key.slice(0, 64)}...' is nested more than ${MAX_KEY_DEPTH} levels deep`);
  let obj = root;
  for (let i = 0; i < parts.length - 1; i++) {
    const head = parts[i]!;
    const child = Object.hasOwn(obj, head) ? obj[head] : undefined;
    if (typeof child === 'string') throw new QmpError(`Parameters '${key}' and '${parts.slice(0, i + 1).join('.')}' conflict`);
    let next = child as Record<string, unknown> | undefined;
    if (next === undefined) {
      next = {};
      define(obj, head, next);
    }
    obj = next;
  }
  const last = parts[parts.length - 1]!;
  if (Object.hasOwn(obj, last)) {
    if (typeof obj[last] !== 'string') throw new QmpError(`Parameters '${key}' and '${key}.${Object.keys(obj[last] as object)[0] ?? ''}' conflict`);
    throw new QmpError(`Parameter '${key}' is set more than once`);
  }
  define(obj, last, value);
}

/** An own, enumerable member, whatever its name (assignment to `__proto__` would set the prototype). */
function define(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Objects whose keys are exactly 0..n-1 become arrays (QEMU's keyval lists). */
function listify(v: unknown): unknown {
  if (typeof v !== 'object' || v === null) return v;
  const obj = v as Record<string, unknown>;
  const keys = Object.keys(obj);
  for (const k of keys) define(obj, k, listify(obj[k]));
  if (keys.length > 0 && keys.every((k) => /^\d+$/.test(k))) {
    const sorted = keys.map(Number).sort((a, b) => a - b);
    if (sorted.every((n, i) => n === i)) return sorted.map((n) => obj[String(n)]);
  }
  return obj;
}

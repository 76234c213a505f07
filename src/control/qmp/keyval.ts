/**
 * QEMU's command-line option syntax (util/keyval.c, util/qemu-option.c): `key=value,key=value`,
 * `,,` for a literal comma in a value, dotted keys for nested objects (`server.path=P`) and
 * numeric keys for lists (`bitmaps.0=a`). Every value stays a string; the schema check converts
 * (see schema.ts `keyval` mode). A JSON object (`--blockdev '{"driver": ...}'`) is taken as is.
 */
import { QmpError } from './QmpError.js';

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
  return listify(root) as Record<string, unknown>;
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

function setPath(obj: Record<string, unknown>, parts: string[], value: string, key: string): void {
  const [head, ...rest] = parts as [string, ...string[]];
  if (rest.length === 0) {
    if (head in obj) throw new QmpError(`Parameter '${key}' is set more than once`);
    obj[head] = value;
    return;
  }
  const child = obj[head];
  if (typeof child === 'string') throw new QmpError(`Parameters '${key}' and '${parts[0]}' conflict`);
  const next = (child as Record<string, unknown> | undefined) ?? {};
  obj[head] = next;
  setPath(next, rest, value, key);
}

/** Objects whose keys are exactly 0..n-1 become arrays (QEMU's keyval lists). */
function listify(v: unknown): unknown {
  if (typeof v !== 'object' || v === null) return v;
  const obj = v as Record<string, unknown>;
  const keys = Object.keys(obj);
  for (const k of keys) obj[k] = listify(obj[k]);
  if (keys.length > 0 && keys.every((k) => /^\d+$/.test(k))) {
    const sorted = keys.map(Number).sort((a, b) => a - b);
    if (sorted.every((n, i) => n === i)) return sorted.map((n) => obj[String(n)]);
  }
  return obj;
}

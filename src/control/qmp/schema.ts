/**
 * Typed argument checking for QMP commands, with QEMU's messages ("Parameter 'x' is missing",
 * "Invalid parameter type for 'x', expected: string", "Parameter 'x' is unexpected", "Parameter
 * 'x' does not accept value 'y'"), nested names in QEMU's dotted form ('cache.direct').
 *
 * The same schemas check the daemon's command-line options (`--blockdev driver=file,...`): those
 * come from QEMU's key=value syntax as strings, and `keyval` mode converts them the way QEMU's
 * keyval visitor does (`on`/`off` for booleans, decimal numbers for integers).
 */
import { QmpError, expects } from './QmpError.js';

export type Schema =
  | { readonly kind: 'str' }
  | { readonly kind: 'int'; readonly min: number; readonly max: number; readonly typeName: string }
  | { readonly kind: 'bool' }
  | { readonly kind: 'enum'; readonly values: readonly string[] }
  | { readonly kind: 'struct'; readonly fields: Fields }
  | { readonly kind: 'union'; readonly base: Fields; readonly discriminator: string; readonly variants: Readonly<Record<string, Fields>> }
  | { readonly kind: 'array'; readonly of: Schema }
  | { readonly kind: 'alternate'; readonly typeName: string; readonly str?: Schema; readonly struct?: Schema }
  | { readonly kind: 'any' };

/** Members of a struct: a schema, optional when its key starts with `*` (as in QAPI). */
export type Fields = Readonly<Record<string, Schema>>;

export const str: Schema = { kind: 'str' };
export const bool: Schema = { kind: 'bool' };
export const any: Schema = { kind: 'any' };
export const int: Schema = { kind: 'int', min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER, typeName: 'int64_t' };
export const uint32: Schema = { kind: 'int', min: 0, max: 2 ** 32 - 1, typeName: 'uint32_t' };
export const uint64: Schema = { kind: 'int', min: 0, max: Number.MAX_SAFE_INTEGER, typeName: 'uint64_t' };
export const enumOf = (...values: string[]): Schema => ({ kind: 'enum', values });
export const struct = (fields: Fields): Schema => ({ kind: 'struct', fields });
export const arrayOf = (of: Schema): Schema => ({ kind: 'array', of });
export const union = (base: Fields, discriminator: string, variants: Record<string, Fields>): Schema => ({ kind: 'union', base, discriminator, variants });

/** Where the value came from: QMP JSON, or QEMU key=value text whose scalars are all strings. */
export type InputMode = 'json' | 'keyval';

/**
 * Checks `value` against `schema` and returns it with its types settled (in keyval mode, strings
 * turned into booleans and numbers). Throws {@link QmpError} with QEMU's wording.
 */
export function check(schema: Schema, value: unknown, path = '', mode: InputMode = 'json'): unknown {
  switch (schema.kind) {
    case 'any':
      return value;
    case 'str':
      if (typeof value !== 'string') throw badType(path, 'string');
      return value;
    case 'bool':
      if (typeof value === 'boolean') return value;
      if (mode === 'keyval' && typeof value === 'string') {
        if (['on', 'yes', 'true', 'y'].includes(value)) return true;
        if (['off', 'no', 'false', 'n'].includes(value)) return false;
        throw new QmpError(`Parameter '${path}' expects 'on' or 'off'`);
      }
      throw badType(path, 'boolean');
    case 'int': {
      let n = value;
      if (mode === 'keyval' && typeof value === 'string') {
        if (!/^-?(0x[0-9a-f]+|\d+)$/i.test(value)) throw expects(path, 'a number');
        n = Number(value.startsWith('-') ? -Number(value.slice(1)) : Number(value));
      }
      if (typeof n !== 'number' || !Number.isInteger(n)) throw badType(path, 'integer');
      if (n < schema.min || n > schema.max) throw expects(path, schema.typeName);
      return n;
    }
    case 'enum':
      if (typeof value !== 'string') throw badType(path, 'string');
      if (!schema.values.includes(value)) throw new QmpError(`Parameter '${path}' does not accept value '${value}'`);
      return value;
    case 'array': {
      if (!Array.isArray(value)) {
        // QEMU's keyval turns `a.0=x,a.1=y` into an object with numeric keys; parseKeyval makes it an array.
        throw badType(path, 'array');
      }
      return value.map((v, i) => check(schema.of, v, `${path}[${i}]`, mode));
    }
    case 'alternate':
      if (typeof value === 'string' && schema.str) return check(schema.str, value, path, mode);
      if (isObject(value) && schema.struct) return check(schema.struct, value, path, mode);
      throw badType(path, schema.typeName);
    case 'struct':
      return checkFields(schema.fields, value, path, mode);
    case 'union': {
      if (!isObject(value)) throw badType(path, 'object');
      const tag = value[schema.discriminator];
      const tagPath = join(path, schema.discriminator);
      if (tag === undefined) throw new QmpError(`Parameter '${tagPath}' is missing`);
      if (typeof tag !== 'string') throw badType(tagPath, 'string');
      const variant = schema.variants[tag];
      if (!variant) throw new QmpError(`Parameter '${tagPath}' does not accept value '${tag}'`);
      return checkFields({ ...schema.base, [schema.discriminator]: enumOf(...Object.keys(schema.variants)), ...variant }, value, path, mode);
    }
  }
}

function checkFields(fields: Fields, value: unknown, path: string, mode: InputMode): Record<string, unknown> {
  if (!isObject(value)) throw badType(path, 'object');
  const out: Record<string, unknown> = {};
  const known = new Set<string>();
  for (const [key, schema] of Object.entries(fields)) {
    const optional = key.startsWith('*');
    const name = optional ? key.slice(1) : key;
    known.add(name);
    const v = value[name];
    if (v === undefined) {
      if (!optional) throw new QmpError(`Parameter '${join(path, name)}' is missing`);
      continue;
    }
    out[name] = check(schema, v, join(path, name), mode);
  }
  for (const key of Object.keys(value)) {
    if (!known.has(key)) throw new QmpError(`Parameter '${join(path, key)}' is unexpected`);
  }
  return out;
}

function badType(path: string, expected: string): QmpError {
  return new QmpError(path === '' ? `Invalid parameter type, expected: ${expected}` : `Invalid parameter type for '${path}', expected: ${expected}`);
}

function join(path: string, name: string): string {
  return path === '' ? name : `${path}.${name}`;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The start-up option parser (QEMU's key=value syntax, parseKeyval, and applyStartupOptions
 * on top of it) against any string: a parsed value, or a typed error — a QmpError from the
 * parser, a StartupError (BM_ERR_INVALID_OPTION) from the options — quickly, and nothing else
 * changed: a key is data, so `__proto__.x=1` must not reach Object.prototype.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockmirrorError, ErrorCode } from '../../src/errors.js';
import { blockdevOptions } from '../../src/control/commands/blockdev.js';
import { exportOptions } from '../../src/control/commands/exports.js';
import type { Daemon } from '../../src/control/Daemon.js';
import { parseKeyval } from '../../src/control/qmp/keyval.js';
import { QmpError } from '../../src/control/qmp/QmpError.js';
import { check, type InputMode } from '../../src/control/qmp/schema.js';
import { applyStartupOptions, StartupError, type StartupOptions } from '../../src/control/startup.js';
import { fuzzParams } from '../helpers/fuzz.js';

/** Longest a parse may take, in ms (inputs are at most a few thousand characters). */
const PARSE_BOUND_MS = 200;

/** Pieces of option text that matter to the parser, and names that are special to JavaScript objects. */
const piece = fc.constantFrom(
  ...'abcxyz019_-.,=:{}[]" \\',
  ',,', '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '0', '1', 'driver', 'node-name', 'file', 'filename',
  'server', 'addr', 'type', 'path', 'on', 'off', '18446744073709551616', '-1', '0x10',
);
const optionText = fc.oneof(
  fc.string({ unit: piece, maxLength: 60 }),
  fc.string({ unit: 'binary', maxLength: 200 }),
  fc.json({ maxDepth: 3 }),
  fc.array(fc.stringMatching(/^[a-z_]{1,3}$/), { minLength: 1, maxLength: 3000 }).map((parts) => `${parts.join('.')}=1`),
);

/** Valid options of each kind, to mutate. */
const VALID: Readonly<Record<keyof StartupOptions, readonly string[]>> = {
  blockdev: ['driver=file,node-name=a,filename=/tmp/a.img,cache.direct=on', 'driver=raw,node-name=r,file.driver=file,file.filename=/x', 'driver=nbd,node-name=n,server.type=unix,server.path=/s,export=e'],
  nbdServer: ['addr.type=unix,addr.path=/run/nbd.sock', 'addr.type=inet,addr.host=localhost,addr.port=10809,max-connections=4'],
  export: ['type=nbd,id=e,node-name=a,writable=on,name=disk'],
  chardev: ['socket,id=m,path=/q.sock,server=on,wait=off'],
  monitor: ['chardev=m', 'chardev=m,mode=control'],
  qmp: ['/tmp/q.sock'],
};

/** A mutation of a valid option: characters inserted, deleted or replaced, items repeated or re-keyed. */
function mutated(valid: string): fc.Arbitrary<string> {
  const edit = fc.oneof(
    fc.tuple(fc.nat(), fc.string({ unit: piece, maxLength: 4 })).map(([at, s]) => (t: string) => t.slice(0, at % (t.length + 1)) + s + t.slice(at % (t.length + 1))),
    fc.tuple(fc.nat(), fc.integer({ min: 1, max: 5 })).map(([at, n]) => (t: string) => t.slice(0, at % (t.length + 1)) + t.slice((at % (t.length + 1)) + n)),
    fc.constantFrom(
      (t: string) => `${t},${t}`,
      (t: string) => `__proto__.${t}`,
      (t: string) => t.replace(/(^|,)([a-z])/, '$1constructor.prototype.$2'),
      (t: string) => t.replace(/=[^,]*/, '=' + 'v'.repeat(5000)),
      (t: string) => t.replaceAll('=', '.'),
    ),
  );
  return fc.array(edit, { minLength: 1, maxLength: 4 }).map((edits) => edits.reduce((t, e) => e(t), valid));
}

const anyOption = fc.oneof(optionText, fc.constantFrom(...Object.values(VALID).flat()).chain(mutated));

/**
 * Members someone added to Object.prototype, to Object, or to a built-in method of Object.prototype
 * (`hasOwnProperty.x=1` once did), removed at once: left there they would break the test runner
 * itself, so a regression fails here instead of hanging.
 */
function unpollute(): string[] {
  const found: string[] = [];
  const targets: Array<[string, object]> = [['Object.prototype', Object.prototype], ['Object', Object]];
  for (const name of Object.getOwnPropertyNames(Object.prototype)) {
    const v = Object.getOwnPropertyDescriptor(Object.prototype, name)?.value as unknown;
    if (typeof v === 'function') targets.push([`Object.prototype.${name}`, v]);
  }
  for (const [where, target] of targets) {
    for (const key of Object.keys(target)) {
      found.push(`${where}.${key}`);
      delete (target as Record<string, unknown>)[key];
    }
  }
  return found;
}

function assertNotPolluted(): void {
  expect(unpollute()).toEqual([]);
}

afterEach(() => assertNotPolluted());

/** A stand-in daemon: checks arguments as the real one does, and starts nothing. */
function checkingDaemon(): Daemon {
  const schemas: Record<string, typeof blockdevOptions> = { 'blockdev-add': blockdevOptions, 'block-export-add': exportOptions };
  return {
    execute: async (name: string, args: unknown, _session: unknown, mode: InputMode) => check(schemas[name]!, args, '', mode),
    exports: { startServer: async () => {} },
    listenQmp: async () => ({}),
  } as unknown as Daemon;
}

describe('keyval fuzz', () => {
  it('any text parses to a plain object or throws a QmpError, quickly, touching no prototype', { timeout: 90_000 }, () => {
    fc.assert(
      fc.property(anyOption, fc.constantFrom(undefined, 'backend', 'chardev'), (text, implied) => {
        const t = performance.now();
        let value: unknown;
        try {
          value = parseKeyval(text, implied);
        } catch (err) {
          expect(err).toBeInstanceOf(QmpError);
          expect((err as QmpError).toJSON()).toEqual({ class: 'GenericError', desc: expect.any(String) });
        }
        expect(performance.now() - t).toBeLessThan(PARSE_BOUND_MS);
        if (value !== undefined && !text.trimStart().startsWith('{')) {
          expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
          expect(JSON.parse(JSON.stringify(value))).toEqual(value); // strings, objects and arrays only
        }
        assertNotPolluted();
      }),
      fuzzParams(10),
    );
  });

  it('key=value text written from an object parses back to it', { timeout: 90_000 }, () => {
    const key = fc.stringMatching(/^[a-z_-][a-z0-9_-]{0,6}$/);
    const tree: fc.Arbitrary<Record<string, unknown>> = fc.letrec<{ node: Record<string, unknown> }>((tie) => ({
      node: fc.dictionary(key, fc.oneof({ depthSize: 'small' }, fc.string({ maxLength: 8 }), tie('node')), { minKeys: 1, maxKeys: 4 }),
    })).node;
    const write = (o: Record<string, unknown>, prefix = ''): string[] =>
      Object.entries(o).flatMap(([k, v]) => (typeof v === 'string' ? [`${prefix}${k}=${v.replaceAll(',', ',,')}`] : write(v as Record<string, unknown>, `${prefix}${k}.`)));
    fc.assert(
      fc.property(tree, (o) => {
        expect(parseKeyval(write(o).join(','))).toEqual(o);
      }),
      fuzzParams(3),
    );
  });

  it('start-up options: applied, or refused with a StartupError (BM_ERR_INVALID_OPTION) naming the option', { timeout: 90_000 }, async () => {
    const kinds = Object.keys(VALID) as Array<keyof StartupOptions>;
    const options = fc.record(Object.fromEntries(kinds.map((k) => [k, fc.array(fc.oneof(anyOption, fc.constantFrom(...VALID[k])), { maxLength: 2 })])) as Record<keyof StartupOptions, fc.Arbitrary<string[]>>);
    await fc.assert(
      fc.asyncProperty(options, async (o) => {
        const t = performance.now();
        const err = await applyStartupOptions(checkingDaemon(), o).then(() => undefined, (e: unknown) => e);
        expect(performance.now() - t).toBeLessThan(PARSE_BOUND_MS);
        if (err === undefined) return;
        expect(err).toBeInstanceOf(StartupError);
        expect(err).toBeInstanceOf(BlockmirrorError);
        expect((err as StartupError).code).toBe(ErrorCode.INVALID_OPTION);
        expect((err as Error).message).toMatch(/^(--(blockdev|nbd-server|export|chardev|monitor|qmp) |no QMP monitor)/);
      }),
      fuzzParams(5),
    );
  });
});

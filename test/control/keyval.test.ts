/**
 * parseKeyval's keys are data: names JavaScript objects treat specially (`__proto__`,
 * `constructor`, `toString`) are members like any other, nothing outside the result changes, and
 * the errors are QMP errors. The fuzz test (keyval.fuzz.test.ts) found each case here.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { blockdevOptions } from '../../src/control/commands/blockdev.js';
import { parseKeyval } from '../../src/control/qmp/keyval.js';
import { QmpError } from '../../src/control/qmp/QmpError.js';
import { check } from '../../src/control/qmp/schema.js';
import { applyStartupOptions, StartupError } from '../../src/control/startup.js';
import { ErrorCode } from '../../src/errors.js';
import type { Daemon } from '../../src/control/Daemon.js';

/** Removes (and returns) anything a failing parse added to Object.prototype, so one failure does not break the rest. */
function pollution(): string[] {
  const found = Object.keys(Object.prototype);
  for (const k of found) delete (Object.prototype as Record<string, unknown>)[k];
  const onMethod = Object.keys(Object.prototype.hasOwnProperty);
  for (const k of onMethod) delete (Object.prototype.hasOwnProperty as unknown as Record<string, unknown>)[k];
  return [...found, ...onMethod.map((k) => `hasOwnProperty.${k}`)];
}

afterEach(() => {
  expect(pollution()).toEqual([]);
});

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('did not throw');
}

describe('keyval: keys are data', () => {
  it('__proto__.x=1 is a member named __proto__, and Object.prototype stays as it was', () => {
    const v = parseKeyval('driver=file,__proto__.polluted=yes');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['driver', '__proto__']);
    expect(Object.getOwnPropertyDescriptor(v, '__proto__')?.value).toEqual({ polluted: 'yes' });
    // ... which the schema refuses, as any unknown member.
    expect(() => check(blockdevOptions, { ...v, 'node-name': 'n', filename: 'f' }, '', 'keyval')).toThrow("Parameter '__proto__' is unexpected");
  });

  it('constructor.prototype.x=1 and hasOwnProperty.x=1 change no built-in', () => {
    expect(parseKeyval('constructor.prototype.p=1')).toEqual({ constructor: { prototype: { p: '1' } } });
    expect(parseKeyval('hasOwnProperty.x=1')).toEqual({ hasOwnProperty: { x: '1' } });
    expect(Object.hasOwn(Object.prototype.hasOwnProperty, 'x')).toBe(false);
  });

  it('toString=x is set once, not "more than once"', () => {
    expect(parseKeyval('toString=x,valueOf=y')).toEqual({ toString: 'x', valueOf: 'y' });
    expect(() => parseKeyval('toString=x,toString=y')).toThrow("Parameter 'toString' is set more than once");
  });

  it('a key nested deeper than 1024 levels is a QMP error, not a stack overflow', () => {
    const err = thrown(() => parseKeyval(`a${'.a'.repeat(20_000)}=1`));
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).message).toMatch(/is nested more than 1024 levels deep$/);
    expect(parseKeyval(`a${'.a'.repeat(100)}=1`)).toBeTypeOf('object');
  });

  it('numbered keys make a list inside the option, never the option itself', () => {
    expect(parseKeyval('0=a,1=b')).toEqual({ 0: 'a', 1: 'b' });
    expect(Array.isArray(parseKeyval('0='))).toBe(false);
    expect(parseKeyval('x.0=a,x.1=b')).toEqual({ x: ['a', 'b'] });
  });

  it("a key that is both a value and an object conflicts, in either order", () => {
    expect(() => parseKeyval('a=1,a.b=2')).toThrow("Parameters 'a.b' and 'a' conflict");
    expect(() => parseKeyval('a.b=2,a=1')).toThrow("Parameters 'a' and 'a.b' conflict");
  });
});

describe('start-up options: typed errors', () => {
  it('a bad option is a StartupError with code BM_ERR_INVALID_OPTION, its QMP error as the cause', async () => {
    const daemon = { execute: async () => ({}), exports: { startServer: async () => {} }, listenQmp: async () => ({}) } as unknown as Daemon;
    const err = await applyStartupOptions(daemon, { blockdev: ['driver=file,bogus'], nbdServer: [], export: [], chardev: [], monitor: [], qmp: ['/q'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StartupError);
    expect((err as StartupError).code).toBe(ErrorCode.INVALID_OPTION);
    expect((err as StartupError).message).toBe("--blockdev driver=file,bogus: Expected '=' after parameter 'bogus'");
    expect((err as StartupError).cause).toBeInstanceOf(QmpError);
  });
});

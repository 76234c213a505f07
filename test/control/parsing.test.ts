/** QEMU's option syntax (keyval), the QMP stream splitter, and typed argument checks, in-process. */
import { describe, expect, it } from 'vitest';
import { JsonStream } from '../../src/control/qmp/JsonStream.js';
import { parseKeyval } from '../../src/control/qmp/keyval.js';
import { blockdevOptions } from '../../src/control/commands/blockdev.js';
import { check } from '../../src/control/qmp/schema.js';

describe('keyval (QEMU command-line option syntax)', () => {
  it('splits key=value pairs, nests dotted keys, makes numbered keys lists', () => {
    expect(parseKeyval('driver=nbd,node-name=n,server.type=unix,server.path=/run/x.sock,export=disk')).toEqual({
      driver: 'nbd',
      'node-name': 'n',
      server: { type: 'unix', path: '/run/x.sock' },
      export: 'disk',
    });
    expect(parseKeyval('a.0=x,a.1=y')).toEqual({ a: ['x', 'y'] });
  });

  it("takes ',,' as a comma inside a value", () => {
    expect(parseKeyval('driver=file,filename=/img/a,,b.img,node-name=n')).toEqual({ driver: 'file', filename: '/img/a,b.img', 'node-name': 'n' });
  });

  it('takes an implied first key where the option has one (--chardev socket,...)', () => {
    expect(parseKeyval('socket,id=m0,path=/q.sock,server=on,wait=off', 'backend')).toEqual({ backend: 'socket', id: 'm0', path: '/q.sock', server: 'on', wait: 'off' });
  });

  it('takes a JSON object as is', () => {
    expect(parseKeyval('{"driver": "file", "node-name": "n", "filename": "f"}')).toEqual({ driver: 'file', 'node-name': 'n', filename: 'f' });
  });

  it('refuses items without =, repeated keys, and keys that are both a value and an object', () => {
    expect(() => parseKeyval('driver=file,bogus')).toThrow("Expected '=' after parameter 'bogus'");
    expect(() => parseKeyval('a=1,a=2')).toThrow("Parameter 'a' is set more than once");
    expect(() => parseKeyval('a=1,a.b=2')).toThrow('conflict');
  });

  it('keyval strings become booleans and numbers through the schema', () => {
    const v = parseKeyval('driver=file,node-name=n,filename=f,cache.direct=on,read-only=off');
    expect(check(blockdevOptions, v, '', 'keyval')).toEqual({ driver: 'file', 'node-name': 'n', filename: 'f', cache: { direct: true }, 'read-only': false });
    expect(() => check(blockdevOptions, parseKeyval('driver=file,node-name=n,filename=f,cache.direct=maybe'), '', 'keyval')).toThrow(
      "Parameter 'cache.direct' expects 'on' or 'off'",
    );
    // A raw node over an inline file node.
    expect(check(blockdevOptions, parseKeyval('driver=raw,node-name=r,file.driver=file,file.filename=f'), '', 'keyval')).toEqual({
      driver: 'raw',
      'node-name': 'r',
      file: { driver: 'file', filename: 'f' },
    });
  });
});

describe('JsonStream (QMP input)', () => {
  it('finds objects whatever the line breaks, and strings with braces in them', () => {
    const s = new JsonStream();
    expect(s.push('{"a": "}{"')).toEqual([]);
    expect(s.push(', "b": [1, {"c": 2}]}{"d"')).toEqual([{ ok: true, value: { a: '}{', b: [1, { c: 2 }] } }]);
    expect(s.push(': "\\"}"}\n')).toEqual([{ ok: true, value: { d: '"}' } }]);
  });

  it('reports tokens outside objects one by one and carries on', () => {
    const s = new JsonStream();
    const items = s.push('nope 12 ] {"ok": true}');
    expect(items.map((i) => (i.ok ? i.value : i.error))).toEqual([
      "JSON parse error, invalid keyword 'nope'",
      'QMP input must be a JSON object',
      "JSON parse error, stray ']'",
      { ok: true },
    ]);
  });

  it('refuses nesting deeper than 1024', () => {
    const s = new JsonStream();
    const [item] = s.push(`${'['.repeat(1100)}${']'.repeat(1100)}`);
    expect(item).toEqual({ ok: false, error: 'JSON parse error, nesting too deep' });
    expect(s.push('{}')).toEqual([{ ok: true, value: {} }]);
  });
});

import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/errors.js';
import { deviceSpecFor } from '../../src/io/location.js';
import { formatNbdUri, isNbdUri, parseNbdUri } from '../../src/io/nbd/NbdUri.js';

describe('NBD URIs (doc/uri.md)', () => {
  it.each([
    ['nbd://example.com/disk', { transport: 'tcp', host: 'example.com', port: 10809, exportName: 'disk' }],
    ['nbd://example.com:10810/disk', { transport: 'tcp', host: 'example.com', port: 10810, exportName: 'disk' }],
    ['nbd://example.com/', { transport: 'tcp', host: 'example.com', port: 10809, exportName: '' }],
    ['nbd://example.com', { transport: 'tcp', host: 'example.com', port: 10809, exportName: '' }],
    ['nbd://example.com//disk', { transport: 'tcp', host: 'example.com', port: 10809, exportName: '/disk' }],
    ['nbd://example.com/hello%20world', { transport: 'tcp', host: 'example.com', port: 10809, exportName: 'hello world' }],
    ['nbd://[::1]:2000/x', { transport: 'tcp', host: '::1', port: 2000, exportName: 'x' }],
    ['nbd://user@127.0.0.1/x', { transport: 'tcp', host: '127.0.0.1', port: 10809, exportName: 'x' }],
    ['nbd+unix:///disk?socket=/run/t.sock', { transport: 'unix', socket: '/run/t.sock', exportName: 'disk' }],
    ['nbd+unix:///?socket=/run/t.sock', { transport: 'unix', socket: '/run/t.sock', exportName: '' }],
    ['nbd+unix:///?socket=/run/a+b%20c.sock', { transport: 'unix', socket: '/run/a+b c.sock', exportName: '' }],
    ['NBD+UNIX:///d?socket=s', { transport: 'unix', socket: 's', exportName: 'd' }],
  ])('parses %s', (uri, expected) => {
    expect(parseNbdUri(uri)).toEqual(expected);
  });

  it.each([
    ['nbd+unix:///disk', ErrorCode.BAD_URI], // no socket
    ['nbd+unix://host/disk?socket=/s', ErrorCode.BAD_URI], // a host on a Unix URI
    ['nbd+unix:///disk?socket=/s&socket=/t', ErrorCode.BAD_URI],
    ['nbd://host/disk?socket=/s', ErrorCode.BAD_URI], // socket on TCP
    ['nbd://host/disk?frobnicate=1', ErrorCode.BAD_URI],
    ['nbd:///disk', ErrorCode.BAD_URI], // TCP without a host, for a client
    ['nbd://host:99999/', ErrorCode.BAD_URI],
    ['nbd://host:http/', ErrorCode.BAD_URI],
    ['nbd:disk', ErrorCode.BAD_URI],
    ['nbd://host/%zz', ErrorCode.BAD_URI],
    ['nbds://host/disk', ErrorCode.NBD_UNSUPPORTED],
    ['nbds+unix:///disk?socket=/s', ErrorCode.NBD_UNSUPPORTED],
    ['nbd+vsock://1:2/x', ErrorCode.NBD_UNSUPPORTED],
    ['nbd://host/disk?tls-type=x509', ErrorCode.NBD_UNSUPPORTED],
  ])('refuses %s', (uri, code) => {
    expect(() => parseNbdUri(uri)).toThrow(expect.objectContaining({ code }));
  });

  it('listens on 127.0.0.1 when a TCP URI names no host', () => {
    expect(parseNbdUri('nbd:///disk', { forListening: true })).toEqual({ transport: 'tcp', host: '127.0.0.1', port: 10809, exportName: 'disk' });
    expect(parseNbdUri('nbd://:0/disk', { forListening: true })).toMatchObject({ host: '127.0.0.1', port: 0 });
  });

  it.each(['nbd://example.com:10809/disk', 'nbd://[::1]:1/a%20b', 'nbd+unix:///disk?socket=/run/t.sock', 'nbd+unix:///?socket=/a%26b'])(
    'formats %s back to itself',
    (uri) => {
      expect(formatNbdUri(parseNbdUri(uri))).toBe(uri);
      expect(parseNbdUri(formatNbdUri(parseNbdUri(uri)))).toEqual(parseNbdUri(uri));
    },
  );

  it('tells URIs from paths, and turns them into device specs', () => {
    expect(isNbdUri('nbd+unix:///?socket=/s')).toBe(true);
    expect(isNbdUri('nbds://h/x')).toBe(true);
    expect(isNbdUri('/var/lib/disk.img')).toBe(false);
    expect(isNbdUri('disk.img')).toBe(false);
    expect(isNbdUri('./nbd:thing')).toBe(false);
    expect(deviceSpecFor('nbd+unix:///d?socket=/s', { role: 'target', writable: true })).toEqual({
      kind: 'nbd',
      uri: 'nbd+unix:///d?socket=/s',
      role: 'target',
      writable: true,
    });
    expect(deviceSpecFor('/tmp/x.img', { role: 'source', writable: false })).toMatchObject({ kind: 'file', path: '/tmp/x.img' });
    expect(() => deviceSpecFor('nbd+unix:///d', { role: 'target', writable: true })).toThrow(expect.objectContaining({ code: ErrorCode.BAD_URI }));
  });
});

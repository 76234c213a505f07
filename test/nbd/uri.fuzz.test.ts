import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlockmirrorError, ErrorCode } from '../../src/errors.js';
import { formatNbdUri, parseNbdUri, type NbdAddress } from '../../src/io/nbd/NbdUri.js';
import { NBD_MAX_STRING_BYTES } from '../../src/io/nbd/protocol.js';
import { fuzzParams } from '../helpers/fuzz.js';

/**
 * A parse must take less than this: linear in the URI's length, with room for a loaded machine
 * (a quadratic parse of a megabyte takes minutes).
 */
function timeBoundMs(uri: string): number {
  return 150 + uri.length / 1000;
}

type Outcome = { address: NbdAddress; error?: undefined } | { address?: undefined; error: unknown };

function attempt(uri: string, forListening = false): Outcome & { ms: number; uri: string } {
  const t0 = performance.now();
  try {
    const address = parseNbdUri(uri, { forListening });
    return { address, ms: performance.now() - t0, uri };
  } catch (error) {
    return { error, ms: performance.now() - t0, uri };
  }
}

/**
 * What every parse must give: an address, or a typed error. BM_ERR_NBD_UNSUPPORTED only for a URI
 * that asks for TLS or a transport blockmirror lacks (nbds, nbd+vsock, ?tls-...); anything else
 * malformed is BM_ERR_BAD_URI.
 */
function expectAddressOrTypedError(uri: string, r: Outcome & { ms: number; uri: string }): void {
  expect(r.ms).toBeLessThan(timeBoundMs(r.uri));
  if (r.error === undefined) return;
  expect(r.error).toBeInstanceOf(BlockmirrorError);
  const { code, message } = r.error as BlockmirrorError;
  expect([ErrorCode.BAD_URI, ErrorCode.NBD_UNSUPPORTED]).toContain(code);
  if (code === ErrorCode.NBD_UNSUPPORTED) expect(asksForWhatIsUnsupported(uri), uri).toBe(true);
  // A message quotes the URI, not megabytes of it.
  expect(message.length).toBeLessThan(400);
}

/** TLS or another transport: nbds:, nbd+vsock:..., or a query key that decodes to tls-... */
function asksForWhatIsUnsupported(uri: string): boolean {
  return /^nbd(s|\+(?!unix:)[a-z]+:)/i.test(uri) || /tls(-|%2d)/i.test(uri);
}

/** parse(format(address)) is the address, and format is a fixed point. */
function expectRoundTrip(address: NbdAddress, forListening = false): void {
  const uri = formatNbdUri(address);
  const again = attempt(uri, forListening);
  expect(again.error, uri).toBeUndefined();
  expect(again.address, uri).toEqual(address);
  expect(formatNbdUri(again.address!)).toBe(uri);
}

/** Pieces URIs are made of, with the characters that are special somewhere in one. */
const uriToken = fc.constantFrom(
  ...'abcxyz019ABZ:/?#[]@!$&\'()*+,;=-._~% '.split(''),
  '%2F', '%25', '%3A', '%40', '%5D', '%00', '%zz', '%E9', '%C3%A9', '%ED%A0%80', 'socket=', 'socket=/s', '&', '::1', '[::1]', '[fe80::1%25eth0]',
  ':10809', ':65536', ':-1', ':0', 'tls-', 'user@', '..', '\u0000', '\ud800', '\udc00', '\u00e9', '\u{1f600}',
);
const scheme = fc.constantFrom('nbd://', 'nbd+unix://', 'nbd+unix:///', 'nbds://', 'nbds+unix://', 'NBD://', 'Nbd+Unix:///', 'nbd:', 'nbd+vsock://', 'nbd+tcp://', 'nbd:/', '');
/** Any UTF-16 code unit, lone surrogates included: what a command line can pass. */
const anyUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));

const uriLike = fc.tuple(scheme, fc.string({ unit: uriToken, maxLength: 30 })).map(([s, rest]) => s + rest);
const randomText = fc.oneof(fc.string({ unit: anyUnit, maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), uriLike);

/** Host names, IPv4 and IPv6 addresses (with zone IDs), and names no resolver would take but a parse keeps. */
const host = fc.oneof(
  fc.domain(),
  fc.ipV4(),
  fc.ipV6(),
  fc.tuple(fc.ipV6(), fc.stringMatching(/^[a-z0-9]{1,8}$/)).map(([ip, zone]) => `${ip}%${zone}`),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }).filter((h) => !h.includes('\0')),
);
/** Export names as the protocol allows them: any Unicode but NUL, up to 4096 UTF-8 bytes. */
const exportName = fc
  .oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ unit: uriToken, maxLength: 40 }), fc.constantFrom('', '/', '//x', 'a b', '%', 'é'))
  .filter((n) => !n.includes('\0') && !/\p{Cs}/u.test(n) && Buffer.byteLength(n) <= NBD_MAX_STRING_BYTES);
const socketPath = fc
  .oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }), fc.string({ unit: uriToken, minLength: 1, maxLength: 40 }))
  .filter((p) => !/\p{Cs}/u.test(p));

const tcpAddress = fc.record({ transport: fc.constant('tcp' as const), host, port: fc.integer({ min: 0, max: 65535 }), exportName });
const unixAddress = fc.record({ transport: fc.constant('unix' as const), socket: socketPath, exportName });
const address: fc.Arbitrary<NbdAddress> = fc.oneof(tcpAddress, unixAddress);

/** A valid URI with a few characters changed: removed, doubled, replaced or inserted. */
const mutatedUri = fc
  .tuple(
    address.map((a) => formatNbdUri(a)),
    fc.array(fc.tuple(fc.constantFrom('delete', 'insert', 'replace', 'double'), fc.nat(), uriToken), { minLength: 1, maxLength: 4 }),
  )
  .map(([uri, edits]) => {
    let s = uri;
    for (const [kind, where, token] of edits) {
      const at = s.length === 0 ? 0 : where % s.length;
      if (kind === 'delete') s = s.slice(0, at) + s.slice(at + 1);
      else if (kind === 'insert') s = s.slice(0, at) + token + s.slice(at);
      else if (kind === 'replace') s = s.slice(0, at) + token + s.slice(at + 1);
      else s = s.slice(0, at) + s.slice(at, at + 1).repeat(2) + s.slice(at + 1);
    }
    return s;
  });

/** Huge inputs: a long export name, host, query, scheme or run of one character. */
const hugeUri = fc
  .tuple(
    fc.constantFrom('nbd://h/', 'nbd://', 'nbd+unix:///x?socket=', 'nbd://[', 'nbd://h/x?', 'nbd://h:', 'nbd://h/x?tls-', 'nbd+', 'nbds+'),
    fc.constantFrom('a', '%41', '&', '/', ':', '[', '1', '%', 'é', 'socket=/s&'),
    fc.integer({ min: 1000, max: 100_000 }),
  )
  .map(([head, piece, n]) => head + piece.repeat(n));

describe('parseNbdUri under fuzzing', () => {
  it('gives an address or a typed error for any text', () => {
    fc.assert(
      fc.property(randomText, fc.boolean(), (uri, forListening) => {
        expectAddressOrTypedError(uri, attempt(uri, forListening));
      }),
      fuzzParams(30),
    );
  });

  it('gives an address or a typed error for valid URIs with a few characters changed, and what parses formats back to itself', () => {
    fc.assert(
      fc.property(mutatedUri, fc.boolean(), (uri, forListening) => {
        const r = attempt(uri, forListening);
        expectAddressOrTypedError(uri, r);
        if (r.address) expectRoundTrip(r.address, forListening);
      }),
      fuzzParams(30),
    );
  });

  it('formats every address it parses from random text back to a URI that parses to the same address', () => {
    fc.assert(
      fc.property(uriLike, fc.boolean(), (uri, forListening) => {
        const r = attempt(uri, forListening);
        expectAddressOrTypedError(uri, r);
        if (r.address) expectRoundTrip(r.address, forListening);
      }),
      fuzzParams(30),
    );
  });

  it('round-trips every valid address through formatNbdUri', () => {
    fc.assert(
      fc.property(address, (a) => expectRoundTrip(a)),
      fuzzParams(20),
    );
  });

  it('refuses ports out of range and reads every port in range', () => {
    fc.assert(
      fc.property(fc.oneof(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 65536, max: 10 ** 9 })), fc.constantFrom('', '0', '00'), (port, zeros) => {
        const r = attempt(`nbd://h:${zeros}${port}/x`);
        expectAddressOrTypedError('', r);
        if (port <= 65535) expect(r.address).toMatchObject({ port });
        else expect(r.error).toMatchObject({ code: ErrorCode.BAD_URI });
      }),
      fuzzParams(10),
    );
  });

  it('parses huge URIs in bounded time, refusing export names past the protocol limit', () => {
    fc.assert(
      fc.property(hugeUri, (uri) => {
        const r = attempt(uri);
        expectAddressOrTypedError(uri, r);
        if (r.address) expect(Buffer.byteLength(r.address.exportName)).toBeLessThanOrEqual(NBD_MAX_STRING_BYTES);
      }),
      fuzzParams(0.3),
    );
  });
});

describe('NBD URIs: inputs fuzzing found', () => {
  it('formats a host holding / or @ so that it reads back as the same host (nbd://%2F)', () => {
    for (const uri of ['nbd://%2F', 'nbd://a%40b/x', 'nbd://a%3Fb%23c/x']) {
      const address = parseNbdUri(uri);
      expect(parseNbdUri(formatNbdUri(address))).toEqual(address);
    }
    expect(formatNbdUri(parseNbdUri('nbd://%2F'))).toBe('nbd://%2F:10809/');
  });

  it('formats an IPv6 zone ID with its % escaped (::0:0:0:0:0:0%a)', () => {
    const address: NbdAddress = { transport: 'tcp', host: '::0:0:0:0:0:0%a', port: 0, exportName: '' };
    expect(formatNbdUri(address)).toBe('nbd://[::0:0:0:0:0:0%25a]:0/');
    expect(parseNbdUri(formatNbdUri(address))).toEqual(address);
    expect(parseNbdUri('nbd://[fe80::1%25eth0]:10809/x')).toMatchObject({ host: 'fe80::1%eth0' });
  });

  it('refuses lone surrogates, which have no UTF-8 form (nbd://\\udc00, socket=\\ud800)', () => {
    for (const uri of ['nbd://\udc00', 'nbd+unix:///?socket=\ud800', 'nbd://h/\ud800x']) {
      expect(() => parseNbdUri(uri), JSON.stringify(uri)).toThrow(expect.objectContaining({ code: ErrorCode.BAD_URI }));
    }
    expect(parseNbdUri('nbd://h/\u{1f600}')).toMatchObject({ exportName: '\u{1f600}' });
  });

  it('reads a port with leading zeros, as RFC 3986 allows (nbd://h:010000/x)', () => {
    expect(parseNbdUri('nbd://h:010000/x')).toMatchObject({ port: 10000 });
    expect(() => parseNbdUri(`nbd://h:${'0'.repeat(1000)}65536/`)).toThrow(expect.objectContaining({ code: ErrorCode.BAD_URI }));
  });

  it('quotes only the start of a huge URI in its error message', () => {
    const uri = `nbd://h/${'%'.repeat(1000)}`;
    expect(() => parseNbdUri(uri)).toThrow(expect.objectContaining({ code: ErrorCode.BAD_URI }));
    const r = attempt(uri);
    expect((r.error as Error).message.length).toBeLessThan(400);
    expect((r.error as Error).message).toContain('(1008 characters)');
    for (const unsupported of [`nbd+${'v'.repeat(1000)}://x/`, `nbd://h/x?tls-${'a'.repeat(1000)}`]) {
      const u = attempt(unsupported);
      expect(u.error).toMatchObject({ code: ErrorCode.NBD_UNSUPPORTED });
      expect((u.error as Error).message.length).toBeLessThan(400);
    }
  });
});

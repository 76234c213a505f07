/**
 * NBD URIs, as NetworkBlockDevice's doc/uri.md defines them:
 * `nbd://host[:port]/export` (TCP) and `nbd+unix:///export?socket=PATH` (Unix socket).
 * The same parser names what a client connects to and where a server listens.
 */
import { ErrorCode, InvalidArgumentError, NbdError } from '../../errors.js';
import { NBD_DEFAULT_PORT, NBD_MAX_STRING_BYTES } from './protocol.js';

/** Where an NBD server is, and which of its exports: a parsed NBD URI. */
export type NbdAddress = NbdTcpAddress | NbdUnixAddress;

export interface NbdTcpAddress {
  readonly transport: 'tcp';
  /** Host name or IP address (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  /** Export name (may be empty: the server's default export). */
  readonly exportName: string;
}

export interface NbdUnixAddress {
  readonly transport: 'unix';
  /** Path of the Unix domain socket. */
  readonly socket: string;
  readonly exportName: string;
}

/** Host a server binds to when its URI names none: loopback, never every interface by accident. */
export const DEFAULT_LISTEN_HOST = '127.0.0.1';

const SCHEME = /^([a-z][a-z0-9+.-]*):/i;

/** True when `location` is written as an NBD URI (`nbd:`, `nbd+unix:`, `nbds:`...) rather than a path. */
export function isNbdUri(location: string): boolean {
  const m = SCHEME.exec(location);
  return m !== null && /^nbds?(\+[a-z]+)?$/i.test(m[1]!);
}

/** Longest URI an error message quotes in full: a message stays a line even for megabytes of input. */
const MAX_QUOTED = 200;

function badUri(uri: string, why: string): InvalidArgumentError {
  const quoted = uri.length <= MAX_QUOTED ? `'${uri}'` : `'${uri.slice(0, MAX_QUOTED)}...' (${uri.length} characters)`;
  return new InvalidArgumentError(ErrorCode.BAD_URI, `bad NBD URI ${quoted}: ${why}`);
}

/** A lone UTF-16 surrogate: it has no UTF-8 form, so it would go out as U+FFFD (another name, another path). */
const LONE_SURROGATE = /\p{Cs}/u;

function decode(uri: string, text: string, what: string): string {
  let decoded: string;
  try {
    decoded = decodeURIComponent(text);
  } catch {
    throw badUri(uri, `${what} has a malformed %-escape`);
  }
  if (LONE_SURROGATE.test(decoded)) throw badUri(uri, `${what} is not valid Unicode (a lone surrogate)`);
  return decoded;
}

/**
 * Parses an NBD URI. Throws {@link InvalidArgumentError} with `BM_ERR_BAD_URI` for anything
 * malformed, and {@link NbdError} with `BM_ERR_NBD_UNSUPPORTED` for a valid URI blockmirror
 * cannot serve (TLS: `nbds`, `nbds+unix`; vsock). With `forListening`, a TCP URI without a
 * host means {@link DEFAULT_LISTEN_HOST}.
 */
export function parseNbdUri(uri: string, options: { forListening?: boolean } = {}): NbdAddress {
  const scheme = SCHEME.exec(uri)?.[1]?.toLowerCase();
  if (scheme === undefined || !isNbdUri(uri)) throw badUri(uri, 'the scheme must be nbd:// or nbd+unix://');
  if (scheme.startsWith('nbds')) {
    throw new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD over TLS (${clip(scheme)}://) is not supported; use nbd:// or nbd+unix://`);
  }
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') {
    throw new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD transport ${clip(scheme)}:// is not supported; use nbd:// or nbd+unix://`);
  }
  const rest = uri.slice(scheme.length + 1);
  if (!rest.startsWith('//')) throw badUri(uri, `expected ${scheme}:// (with two slashes)`);
  const hashAt = rest.indexOf('#');
  const beforeFragment = hashAt < 0 ? rest : rest.slice(0, hashAt);
  const queryAt = beforeFragment.indexOf('?');
  const hierarchy = queryAt < 0 ? beforeFragment : beforeFragment.slice(0, queryAt);
  const query = parseQuery(uri, queryAt < 0 ? '' : beforeFragment.slice(queryAt + 1));
  const pathAt = hierarchy.indexOf('/', 2);
  const authority = hierarchy.slice(2, pathAt < 0 ? undefined : pathAt);
  // The export name is the path without its leading '/' (so `//disk` names `/disk`).
  const exportName = pathAt < 0 ? '' : decode(uri, hierarchy.slice(pathAt + 1), 'the export name');
  if (Buffer.byteLength(exportName) > NBD_MAX_STRING_BYTES) throw badUri(uri, `the export name is longer than ${NBD_MAX_STRING_BYTES} bytes`);
  if (exportName.includes('\0')) throw badUri(uri, 'the export name contains a NUL character');

  for (const [key] of query) {
    if (key === 'socket' && scheme === 'nbd+unix') continue;
    if (key.startsWith('tls-')) throw new NbdError(ErrorCode.NBD_UNSUPPORTED, `NBD over TLS (${clip(key)}) is not supported`);
    throw badUri(uri, `unknown query parameter '${clip(key)}'`);
  }

  if (scheme === 'nbd+unix') {
    if (authority !== '') throw badUri(uri, 'a Unix socket URI has no host: write nbd+unix:///export?socket=PATH');
    const sockets = query.filter(([key]) => key === 'socket').map(([, value]) => value);
    if (sockets.length !== 1 || sockets[0] === '') throw badUri(uri, 'nbd+unix:// needs exactly one ?socket=PATH');
    return { transport: 'unix', socket: sockets[0]!, exportName };
  }
  const { host, port } = parseAuthority(uri, authority, options.forListening === true);
  return { transport: 'tcp', host, port, exportName };
}

/** Query parameters as RFC 3986 reads them: `+` is a plus sign (socket paths may hold one), not a space. */
function parseQuery(uri: string, query: string): [string, string][] {
  if (query === '') return [];
  return query.split('&').map((pair) => {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    return [decode(uri, key, 'a query parameter'), eq < 0 ? '' : decode(uri, pair.slice(eq + 1), `query parameter '${clip(key)}'`)];
  });
}

function parseAuthority(uri: string, authority: string, forListening: boolean): { host: string; port: number } {
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1); // userinfo only matters to TLS
  let host: string;
  let portText: string | undefined;
  if (hostPort.startsWith('[')) {
    const close = hostPort.indexOf(']');
    if (close < 0) throw badUri(uri, 'unclosed [ in an IPv6 address');
    host = hostPort.slice(1, close);
    const after = hostPort.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) throw badUri(uri, `unexpected '${clip(after)}' after the IPv6 address`);
    portText = after === '' ? undefined : after.slice(1);
  } else {
    const colon = hostPort.indexOf(':');
    host = colon < 0 ? hostPort : hostPort.slice(0, colon);
    portText = colon < 0 ? undefined : hostPort.slice(colon + 1);
  }
  host = decode(uri, host, 'the host');
  if (host === '') {
    if (!forListening) throw badUri(uri, 'nbd:// needs a host: nbd://HOST[:PORT]/export');
    host = DEFAULT_LISTEN_HOST;
  }
  let port = NBD_DEFAULT_PORT;
  if (portText !== undefined && portText !== '') {
    // RFC 3986 allows leading zeros (`:010809`); Number() of a very long run of digits is Infinity.
    if (!/^\d+$/.test(portText) || Number(portText) > 65535) throw badUri(uri, `'${clip(portText)}' is not a port number`);
    port = Number(portText);
  }
  return { host, port };
}

/** A piece of input as a message quotes it. */
function clip(text: string): string {
  return text.length <= 40 ? text : `${text.slice(0, 40)}...`;
}

/**
 * Writes an address back as a canonical NBD URI that {@link parseNbdUri} reads as the same
 * address: export names, socket paths and hosts %-encoded (a host may hold `/`, `@` or `%`, an
 * IPv6 zone ID as in `fe80::1%25eth0`), IPv6 addresses in brackets.
 */
export function formatNbdUri(address: NbdAddress): string {
  const path = encodeURIComponent(address.exportName).replace(/%2F/gi, '/');
  if (address.transport === 'unix') {
    return `nbd+unix:///${path}?socket=${encodeURIComponent(address.socket).replace(/%2F/gi, '/')}`;
  }
  const host = address.host.includes(':') ? `[${encodeURIComponent(address.host).replace(/%3A/gi, ':')}]` : encodeURIComponent(address.host);
  return `nbd://${host}:${address.port}/${path}`;
}

/** The address with another export name. */
export function withExportName(address: NbdAddress, exportName: string): NbdAddress {
  return { ...address, exportName };
}

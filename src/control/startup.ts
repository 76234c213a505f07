import { ErrorCode, InvalidArgumentError, type BlockmirrorErrorOptions } from '../errors.js';
import { QmpError } from './qmp/QmpError.js';
import { parseKeyval } from './qmp/keyval.js';
import { bool, check, enumOf, str, struct, uint32 } from './qmp/schema.js';
import { socketAddress } from './commands/blockdev.js';
import type { Daemon } from './Daemon.js';

/** The daemon's start-up options, in qemu-storage-daemon's form (each may be given many times). */
export interface StartupOptions {
  readonly blockdev: readonly string[];
  readonly nbdServer: readonly string[];
  readonly export: readonly string[];
  readonly chardev: readonly string[];
  readonly monitor: readonly string[];
  readonly qmp: readonly string[];
}

/**
 * A start-up option that cannot be used, named as the user gave it: an
 * {@link InvalidArgumentError} with code `BM_ERR_INVALID_OPTION` (the command line exits with the
 * usage status), the QMP error it came from, if any, as its cause.
 */
export class StartupError extends InvalidArgumentError {
  constructor(message: string, options: BlockmirrorErrorOptions = {}) {
    super(ErrorCode.INVALID_OPTION, message, options);
  }
}

const chardevSchema = struct({
  backend: enumOf('socket'),
  id: str,
  path: str,
  '*server': bool,
  '*wait': bool,
  '*telnet': bool,
  '*websocket': bool,
});
const monitorSchema = struct({ chardev: str, '*mode': enumOf('control', 'readline'), '*pretty': bool, '*id': str });
const nbdServerSchema = struct({ addr: socketAddress, '*tls-creds': str, '*tls-authz': str, '*max-connections': uint32 });

function parse(option: string, text: string, impliedKey?: string): { value: Record<string, unknown>; mode: 'json' | 'keyval' } {
  try {
    return { value: parseKeyval(text, impliedKey), mode: text.trimStart().startsWith('{') ? 'json' : 'keyval' };
  } catch (err) {
    throw new StartupError(`--${option} ${text}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

async function apply(option: string, text: string, run: () => Promise<unknown>): Promise<void> {
  try {
    await run();
  } catch (err) {
    if (err instanceof StartupError) throw err;
    throw new StartupError(`--${option} ${text}: ${err instanceof QmpError ? err.message : String(err)}`, { cause: err });
  }
}

/**
 * Applies the start-up options in dependency order: block nodes, the NBD server, exports, then the
 * QMP monitors (so a client that finds the socket finds everything set up).
 */
export async function applyStartupOptions(daemon: Daemon, o: StartupOptions): Promise<void> {
  for (const text of o.blockdev) {
    const { value, mode } = parse('blockdev', text);
    await apply('blockdev', text, () => daemon.execute('blockdev-add', value, undefined, mode));
  }
  for (const text of o.nbdServer) {
    const { value, mode } = parse('nbd-server', text);
    await apply('nbd-server', text, async () => {
      const a = check(nbdServerSchema, value, '', mode) as { addr: Parameters<Daemon['exports']['startServer']>[0]; 'tls-creds'?: string; 'max-connections'?: number };
      if (a['tls-creds'] !== undefined) throw new QmpError('TLS is not supported by this daemon');
      await daemon.exports.startServer(a.addr, a['max-connections']);
    });
  }
  for (const text of o.export) {
    const { value, mode } = parse('export', text);
    await apply('export', text, () => daemon.execute('block-export-add', value, undefined, mode));
  }
  const chardevs = new Map<string, string>();
  for (const text of o.chardev) {
    const { value, mode } = parse('chardev', text, 'backend');
    await apply('chardev', text, async () => {
      const c = check(chardevSchema, value, '', mode) as { id: string; path: string; server?: boolean; telnet?: boolean; websocket?: boolean };
      if (c.server !== true) throw new QmpError('only server=on sockets are supported: the daemon listens, clients connect');
      if (c.telnet || c.websocket) throw new QmpError('telnet and websocket framing are not supported');
      if (chardevs.has(c.id)) throw new QmpError(`attempt to add duplicate property '${c.id}' to object (type 'container')`);
      chardevs.set(c.id, c.path);
    });
  }
  const paths = [...o.qmp];
  for (const text of o.monitor) {
    const { value, mode } = parse('monitor', text, 'chardev');
    await apply('monitor', text, async () => {
      const m = check(monitorSchema, value, '', mode) as { chardev: string; mode?: string };
      if (m.mode === 'readline') throw new QmpError('only mode=control (QMP) monitors are supported');
      const path = chardevs.get(m.chardev);
      if (path === undefined) throw new QmpError(`chardev "${m.chardev}" not found`);
      paths.push(path);
    });
  }
  if (paths.length === 0) throw new StartupError('no QMP monitor: give --qmp PATH, or --chardev socket,id=ID,path=PATH,server=on,wait=off with --monitor chardev=ID');
  for (const path of paths) await apply('qmp', path, () => daemon.listenQmp(path));
}

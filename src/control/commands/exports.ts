import type { SocketAddress } from '../BlockGraph.js';
import { QmpError } from '../qmp/QmpError.js';
import { bool, enumOf, str, struct, uint32, union, type Schema } from '../qmp/schema.js';
import { command } from './command.js';

/** QEMU's SocketAddressLegacy (nbd-server-start): the address inside `data`. */
const socketAddressLegacy: Schema = union({}, 'type', {
  unix: { data: struct({ path: str, '*abstract': bool, '*tight': bool }) },
  inet: { data: struct({ host: str, port: str, '*numeric': bool, '*to': uint32, '*ipv4': bool, '*ipv6': bool, '*keep-alive': bool }) },
});

type LegacyAddress = { type: 'unix'; data: { path: string } } | { type: 'inet'; data: { host: string; port: string } };

function flat(a: LegacyAddress): SocketAddress {
  return a.type === 'unix' ? { type: 'unix', path: a.data.path } : { type: 'inet', host: a.data.host, port: a.data.port };
}

export interface ExportArgs {
  type: 'nbd';
  id: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
  name?: string;
  description?: string;
}

/** QEMU's BlockExportOptions, for the one export type the daemon has. */
export const exportOptions: Schema = union(
  { id: str, 'node-name': str, '*writable': bool, '*writethrough': bool, '*fixed-iothread': bool, '*iothread': str },
  'type',
  { nbd: { '*name': str, '*description': str, '*allocation-depth': bool } },
);

export const exportCommands = [
  command<{ addr: LegacyAddress; 'tls-creds'?: string; 'max-connections'?: number }>(
    'nbd-server-start',
    struct({ addr: socketAddressLegacy, '*tls-creds': str, '*tls-authz': str, '*max-connections': uint32 }),
    async (a, { daemon }) => {
      if (a['tls-creds'] !== undefined) throw new QmpError('TLS is not supported by this daemon');
      await daemon.exports.startServer(flat(a.addr), a['max-connections']);
    },
  ),
  command('nbd-server-stop', undefined, async (_a, { daemon }) => daemon.exports.stopServer()),
  command<ExportArgs>('block-export-add', exportOptions, (a, { daemon }) => daemon.addExport(a)),
  command<{ id: string; mode?: 'safe' | 'hard' }>('block-export-del', struct({ id: str, '*mode': enumOf('safe', 'hard') }), async (a, { daemon }) =>
    daemon.exports.delete(a.id, a.mode ?? 'safe'),
  ),
  command('query-block-exports', undefined, (_a, { daemon }) =>
    daemon.exports.list.map((e) => ({ type: 'nbd', id: e.id, 'node-name': e.node.name, 'shutting-down': e.shuttingDown })),
  ),
];

import type { BlockdevOptions } from '../BlockGraph.js';
import { bool, enumOf, str, struct, uint32, union, type Fields, type Schema } from '../qmp/schema.js';
import { command } from './command.js';

/** QEMU's SocketAddress (flat: `type` beside the address), as --nbd-server and nbd nodes take it. */
export const socketAddress: Schema = union({}, 'type', {
  unix: { path: str, '*abstract': bool, '*tight': bool },
  inet: { host: str, port: str, '*numeric': bool, '*to': uint32, '*ipv4': bool, '*ipv6': bool, '*keep-alive': bool },
});

const blockdevVariants: Record<string, Fields> = {};

/** QEMU's BlockdevOptions for the drivers the daemon has: file, raw, nbd. */
export const blockdevOptions: Schema = union(
  {
    '*node-name': str,
    '*read-only': bool,
    '*auto-read-only': bool,
    '*force-share': bool,
    '*discard': enumOf('ignore', 'unmap'),
    '*cache': struct({ '*direct': bool, '*no-flush': bool }),
    '*detect-zeroes': enumOf('off', 'on', 'unmap'),
  },
  'driver',
  blockdevVariants,
);

Object.assign(blockdevVariants, {
  file: { filename: str, '*aio': enumOf('threads', 'native', 'io_uring'), '*locking': enumOf('auto', 'on', 'off') },
  raw: { file: { kind: 'alternate', typeName: 'BlockdevRef', str, struct: blockdevOptions } satisfies Schema },
  nbd: { server: socketAddress, '*export': str, '*tls-creds': str, '*reconnect-delay': uint32, '*open-timeout': uint32 },
} satisfies Record<string, Fields>);

export const blockdevCommands = [
  command<BlockdevOptions>('blockdev-add', blockdevOptions, async (args, { daemon }) => {
    await daemon.graph.add(args);
  }),
  command<{ 'node-name': string }>('blockdev-del', struct({ 'node-name': str }), async (args, { daemon }) => {
    await daemon.graph.delete(args['node-name']);
  }),
  command<{ flat?: boolean }>('query-named-block-nodes', struct({ '*flat': bool }), (_args, { daemon }) =>
    daemon.graph.nodes.map((node) => ({
      'node-name': node.name,
      drv: node.driver,
      ro: node.readOnly,
      file: node.filename,
      image: { filename: node.filename, format: node.driver, 'virtual-size': node.size },
      cache: { writeback: true, direct: node.direct, 'no-flush': false },
      ...(node.bitmaps.size
        ? {
            'dirty-bitmaps': [...node.bitmaps.values()].map((b) => ({
              name: b.name,
              recording: b.recording,
              persistent: b.persistent,
              busy: false,
              granularity: b.bitmap.granularity,
              count: b.bitmap.dirtyBytes(),
              ...(b.inconsistent ? { inconsistent: true } : {}),
            })),
          }
        : {}),
    })),
  ),
];


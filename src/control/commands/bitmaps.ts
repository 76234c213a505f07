import type { BitmapAction } from '../Bitmaps.js';
import { arrayOf, bool, str, struct, uint32, type Fields, type Schema } from '../qmp/schema.js';
import { command } from './command.js';

const named: Fields = { node: str, name: str };

/** Argument fields of each bitmap action (commands and transaction actions alike). */
export const bitmapActionFields: Readonly<Record<BitmapAction['type'], Fields>> = {
  'block-dirty-bitmap-add': { ...named, '*granularity': uint32, '*persistent': bool, '*disabled': bool },
  'block-dirty-bitmap-remove': named,
  'block-dirty-bitmap-clear': named,
  'block-dirty-bitmap-enable': named,
  'block-dirty-bitmap-disable': named,
  'block-dirty-bitmap-merge': {
    node: str,
    target: str,
    bitmaps: arrayOf({ kind: 'alternate', typeName: 'BlockDirtyBitmapOrStr', str, struct: struct(named) } satisfies Schema),
  },
};

export const bitmapCommands = Object.entries(bitmapActionFields).map(([type, fields]) =>
  command<Omit<BitmapAction, 'type'>>(type, struct(fields), (a, { daemon }) => daemon.bitmaps.run({ type, ...a } as BitmapAction)),
);

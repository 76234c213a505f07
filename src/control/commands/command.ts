import type { Daemon } from '../Daemon.js';
import type { QmpSession } from '../qmp/QmpServer.js';
import type { Schema } from '../qmp/schema.js';

/** What a command runs with. */
export interface CommandContext {
  readonly daemon: Daemon;
  /** The client that sent the command (none for start-up options). */
  readonly session: QmpSession | undefined;
}

/** One QMP command: its arguments' schema (none: it takes none) and what it does. */
export interface QmpCommand {
  readonly name: string;
  readonly args?: Schema;
  // Arguments arrive checked against `args`; each command states the shape it relies on.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  run(args: any, ctx: CommandContext): unknown;
}

/** Defines a command with typed arguments. */
export function command<A>(name: string, args: Schema | undefined, run: (args: A, ctx: CommandContext) => unknown): QmpCommand {
  return { name, args, run };
}

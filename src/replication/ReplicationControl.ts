import { QmpError } from '../control/qmp/QmpError.js';
import type { QmpDispatcher, QmpVersion } from '../control/qmp/QmpServer.js';
import type { Replication } from './Replication.js';

/** What the primary's monitor says about itself. */
export const REPLICATION_QMP_VERSION: QmpVersion = { qemu: { major: 8, minor: 2, micro: 0 }, package: 'blockmirror 0.1.0 replicate' };

const COMMANDS = ['checkpoint', 'query-replication', 'query-version', 'query-commands'] as const;

/**
 * The primary's monitor (`blockmirror replicate --monitor PATH`), QMP-shaped: `checkpoint` (one
 * now, across every disk; its id and duration) and `query-replication` (the state, the last
 * checkpoint, and each disk's link, lag and resync).
 */
export class ReplicationControl implements QmpDispatcher {
  readonly #replication: Replication;

  constructor(replication: Replication) {
    this.#replication = replication;
  }

  async dispatch(name: string, args: Record<string, unknown> | undefined): Promise<unknown> {
    if (!(COMMANDS as readonly string[]).includes(name)) throw new QmpError(`The command ${name} has not been found`, 'CommandNotFound');
    if (args && Object.keys(args).length) throw new QmpError(`Parameter '${Object.keys(args)[0]}' is unexpected`);
    try {
      switch (name) {
        case 'checkpoint': {
          const c = await this.#replication.checkpoint();
          return { id: c.id, time: c.time, ms: Math.round(c.ms * 1000) / 1000 };
        }
        case 'query-replication':
          return this.#replication.status();
        case 'query-version':
          return REPLICATION_QMP_VERSION;
        default:
          return ['qmp_capabilities', ...COMMANDS].map((n) => ({ name: n }));
      }
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      const message = err instanceof Error ? err.message : String(err);
      throw new QmpError(typeof code === 'string' && code.startsWith('BM_ERR_') ? `${message} [${code}]` : message);
    }
  }
}

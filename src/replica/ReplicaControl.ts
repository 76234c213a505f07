import { QmpError } from '../control/qmp/QmpError.js';
import type { QmpDispatcher, QmpVersion } from '../control/qmp/QmpServer.js';
import { check, enumOf, str, struct, uint64, type Schema } from '../control/qmp/schema.js';
import type { FailoverTarget } from './ReplicaStateFile.js';
import type { Replica, ReplicaStatus } from './Replica.js';

/** What the replica's control socket says about itself in its greeting and in query-version. */
export const REPLICA_QMP_VERSION: QmpVersion = { qemu: { major: 8, minor: 2, micro: 0 }, package: 'blockmirror 0.1.0 replica' };

/** One command of the control socket: its arguments' schema (none: it takes none) and what it does. */
interface ReplicaCommand {
  readonly name: string;
  readonly args?: Schema;
  // Arguments arrive checked against `args`.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  run(replica: Replica, args: any): Promise<unknown> | unknown;
}

/** `query-replica`'s reply: {@link ReplicaStatus} with QMP's member names. */
export function statusToQmp(s: ReplicaStatus): Record<string, unknown> {
  return {
    state: s.state,
    checkpoint: { id: s.checkpoint.id, time: s.checkpoint.time },
    'checkpoint-trusted': s.checkpointTrusted,
    ...(s.untrustedReason !== undefined && { 'untrusted-reason': s.untrustedReason }),
    durability: s.durability,
    'buffer-bytes': s.bufferBytes,
    'saved-granules': s.savedGranules,
    granularity: s.granularity,
    size: s.size,
    'writes-since-checkpoint': s.writesSinceCheckpoint,
    'bytes-since-checkpoint': s.bytesSinceCheckpoint,
    lag: Math.round(s.lag * 1000) / 1000,
    ...(s.drill && {
      drill: { uri: s.drill.uri, started: s.drill.started, 'written-bytes': s.drill.writtenBytes, 'snapshot-bytes': s.drill.snapshotBytes },
    }),
    ...(s.failover && { failover: { to: s.failover.to, time: s.failover.time, 'restored-bytes': s.failover.restoredBytes } }),
  };
}

const COMMANDS: readonly ReplicaCommand[] = [
  {
    name: 'checkpoint',
    args: struct({ '*id': uint64 }),
    run: (r, a: { id?: number }) => r.checkpoint(a.id),
  },
  {
    name: 'failover',
    args: struct({ to: enumOf('checkpoint', 'latest') }),
    run: async (r, a: { to: FailoverTarget }) => {
      const f = await r.failover(a.to);
      return { state: 'failed-over', to: f.to, checkpoint: f.checkpoint, 'restored-granules': f.restoredGranules, 'restored-bytes': f.restoredBytes };
    },
  },
  { name: 'query-replica', run: (r) => statusToQmp(r.status()) },
  {
    name: 'drill-start',
    args: struct({ '*uri': str }),
    run: (r, a: { uri?: string }) => r.drillStart(a.uri),
  },
  {
    name: 'drill-stop',
    run: async (r) => {
      const d = await r.drillStop();
      return { 'written-bytes': d.writtenBytes, seconds: Math.round(d.seconds * 1000) / 1000 };
    },
  },
  { name: 'query-version', run: () => REPLICA_QMP_VERSION },
  { name: 'query-commands', run: () => ['qmp_capabilities', ...COMMANDS.map((c) => c.name)].map((name) => ({ name })) },
];

/**
 * The replica's control socket, QMP-shaped (`{"execute": "checkpoint", "arguments": {"id": 7}}`):
 * arguments checked with QEMU's messages, unknown commands `CommandNotFound`, failures
 * `GenericError` with the error's message (which names its `BM_ERR_*` code).
 */
export class ReplicaControl implements QmpDispatcher {
  readonly #replica: Replica;
  readonly #commands = new Map(COMMANDS.map((c) => [c.name, c]));

  constructor(replica: Replica) {
    this.#replica = replica;
  }

  async dispatch(name: string, args: Record<string, unknown> | undefined): Promise<unknown> {
    const cmd = this.#commands.get(name);
    if (!cmd) throw new QmpError(`The command ${name} has not been found`, 'CommandNotFound');
    let checked: unknown = {};
    if (cmd.args) checked = check(cmd.args, args ?? {});
    else if (args && Object.keys(args).length) throw new QmpError(`Parameter '${Object.keys(args)[0]}' is unexpected`);
    try {
      return (await cmd.run(this.#replica, checked)) ?? {};
    } catch (err) {
      if (err instanceof QmpError) throw err;
      const code = (err as { code?: unknown }).code;
      const message = err instanceof Error ? err.message : String(err);
      throw new QmpError(typeof code === 'string' && code.startsWith('BM_ERR_') ? `${message} [${code}]` : message);
    }
  }
}

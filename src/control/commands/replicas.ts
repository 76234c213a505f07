import type { FailoverTarget } from '../../replica/ReplicaStateFile.js';
import type { ReplicaStartArgs } from '../Replicas.js';
import { enumOf, str, struct, uint64 } from '../qmp/schema.js';
import { command } from './command.js';

/**
 * blockmirror's extension: the secondary of a continuous replication as a daemon node
 * (docs/qmp.md, "Replicas"). Not QEMU's, hence the `x-blockmirror-` / `blockmirror` names.
 */
export const replicaCommands = [
  command<ReplicaStartArgs>(
    'x-blockmirror-replica-start',
    struct({ 'node-name': str, id: str, export: str, '*granularity': uint64, '*state': str, '*durability': enumOf('power', 'process') }),
    async (a, { daemon }) => {
      await daemon.replicas.start(a);
    },
  ),
  command<{ id: string; 'checkpoint-id'?: number }>('x-blockmirror-replica-checkpoint', struct({ id: str, '*checkpoint-id': uint64 }), (a, { daemon }) =>
    daemon.replicas.checkpoint(a.id, a['checkpoint-id']),
  ),
  command<{ id: string; to: FailoverTarget }>('x-blockmirror-replica-failover', struct({ id: str, to: enumOf('checkpoint', 'latest') }), async (a, { daemon }) => {
    const f = await daemon.replicas.failover(a.id, a.to);
    return { state: 'failed-over', to: f.to, checkpoint: f.checkpoint, 'restored-granules': f.restoredGranules, 'restored-bytes': f.restoredBytes };
  }),
  command<{ id: string }>('x-blockmirror-replica-stop', struct({ id: str }), async (a, { daemon }) => {
    await daemon.replicas.stop(a.id);
  }),
  command('query-blockmirror-replicas', undefined, (_a, { daemon }) => daemon.replicas.list()),
];

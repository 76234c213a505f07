import type { BlockDevice } from '../io/BlockDevice.js';
import { NbdDevice } from '../io/nbd/NbdDevice.js';

/**
 * Where a copy's I/O runs. Files take any number of handles, and an fdatasync through one covers
 * writes made through all of them, so every worker opens its own. NBD exports do not allow that:
 *
 * - Without NBD_FLAG_CAN_MULTI_CONN, a FLUSH covers only the writes made on its own connection,
 *   and proto.md says a client SHOULD NOT spread requests over several connections at all.
 * - Servers cap and end connections: qemu-nbd serves one client unless started with `--shared=N`
 *   (7.2 advertises CAN_MULTI_CONN exactly when N is not 1), and without `--persistent` it exits
 *   when its first client leaves. A second connection to a default qemu-nbd is accepted by the
 *   kernel and then never greeted; a connection opened after a probe finds no server at all.
 *
 * So a copy that touches an NBD export runs on the coordinator's own devices: the ones it opened
 * to check sizes and flags are the ones the copy uses (an {@link InlineCopyRunner}), so the final
 * flush goes through the very device every write went through. An {@link NbdDevice} uses one
 * connection, or, where the export advertises multi-conn, spreads its requests over a few (and
 * gives up on those a server at its limit never greets). The I/O stays asynchronous and
 * pipelined (queue depth requests in flight); a CPU profile of a 1 GiB copy into qemu-nbd shows
 * the coordinator thread idle about 80% of the time, so worker threads would add nothing but
 * connections. Measurements in docs/perf.md ("NBD").
 */
export interface ConnectionPlan {
  /** Copy on the coordinator's own open devices instead of a worker pool. */
  readonly inline: boolean;
  /** Why the copy runs inline, for messages. */
  readonly note: string | undefined;
}

export function planConnections(source: BlockDevice, target: BlockDevice): ConnectionPlan {
  const nbd = [source, target].find((d) => d instanceof NbdDevice);
  return {
    inline: nbd !== undefined,
    note: nbd ? `copied by the coordinator thread on its own connection(s) to ${nbd.description}, not by worker threads` : undefined,
  };
}

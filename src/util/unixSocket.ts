import { connect } from 'node:net';

/** True when something accepts connections on the Unix socket (so it is not a stale file). */
export function someoneListens(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** What a job does when a copy fails on one side (QEMU's BlockdevOnError, minus the auto variant). */
export type ErrorPolicy = 'report' | 'ignore' | 'stop' | 'enospc';
/** What the job did about one error. */
export type ErrorAction = 'report' | 'ignore' | 'stop';
/** QEMU's BlockDeviceIoStatus: why a job is stopped, if it is. */
export type IoStatus = 'ok' | 'failed' | 'nospace';

export const ERROR_POLICIES: readonly ErrorPolicy[] = ['report', 'ignore', 'stop', 'enospc'];

/**
 * `report` fails the job; `ignore` retries the extent later; `stop` pauses the job until
 * resumed; `enospc` stops on ENOSPC (space can be added, then resume) and reports anything else.
 */
export function resolveErrorAction(policy: ErrorPolicy, errno: string): ErrorAction {
  if (policy === 'enospc') return errno === 'ENOSPC' ? 'stop' : 'report';
  return policy;
}

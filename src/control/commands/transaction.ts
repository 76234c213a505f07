import type { BitmapAction } from '../Bitmaps.js';
import type { DaemonJob } from '../Jobs.js';
import { QmpError } from '../qmp/QmpError.js';
import { arrayOf, bool, enumOf, str, struct, union, type Fields } from '../qmp/schema.js';
import { bitmapActionFields } from './bitmaps.js';
import { command, type CommandContext } from './command.js';

/**
 * Completing or cancelling several mirror jobs at one point in time. QEMU has no transaction
 * action for this (its transactions start jobs, they do not end them), so these are ours, named
 * in QEMU's style for extensions: `x-blockmirror-block-job-complete` {device} and
 * `x-blockmirror-block-job-cancel` {device, force?}. Every named job's writers are quiesced at
 * the same instant (together with the bitmap actions of the same transaction); then each job
 * drains and concludes with its usual events.
 */
export const COMPLETE_ACTION = 'x-blockmirror-block-job-complete';
export const CANCEL_ACTION = 'x-blockmirror-block-job-cancel';

const actionData: Record<string, Fields> = {
  abort: { data: struct({}) },
  [COMPLETE_ACTION]: { data: struct({ device: str }) },
  [CANCEL_ACTION]: { data: struct({ device: str, '*force': bool }) },
};
for (const [type, fields] of Object.entries(bitmapActionFields)) actionData[type] = { data: struct(fields) };

type Action =
  | { type: 'abort'; data: Record<string, never> }
  | { type: typeof COMPLETE_ACTION; data: { device: string } }
  | { type: typeof CANCEL_ACTION; data: { device: string; force?: boolean } }
  | { type: BitmapAction['type']; data: Omit<BitmapAction, 'type'> };

interface TransactionArgs {
  actions: Action[];
  properties?: { 'completion-mode'?: 'individual' | 'grouped' };
}

async function transaction(a: TransactionArgs, { daemon }: CommandContext): Promise<void> {
  if (a.properties?.['completion-mode'] === 'grouped' && a.actions.length) {
    throw new QmpError(`Action '${a.actions[0]!.type}' does not support Transaction property completion-mode = grouped`);
  }
  if (a.actions.some((x) => x.type === 'abort')) throw new QmpError('Transaction aborted using Abort action');
  const bitmapActions: BitmapAction[] = [];
  const complete: DaemonJob[] = [];
  const cancel: DaemonJob[] = [];
  const forceCancel: DaemonJob[] = [];
  const named = new Set<DaemonJob>();
  for (const action of a.actions) {
    if (action.type === COMPLETE_ACTION || action.type === CANCEL_ACTION) {
      const job = daemon.jobs.blockJob(action.data.device);
      if (named.has(job)) throw new QmpError(`Block job '${job.id}' is named twice in the transaction`);
      named.add(job);
      if (action.type === COMPLETE_ACTION) {
        job.assertVerb('complete');
        if (job.status !== 'ready') throw new QmpError(`Job '${job.id}' in state '${job.status}' cannot be completed in a transaction: resume it first`);
        complete.push(job);
      } else {
        job.assertVerb('cancel');
        (action.data.force ? forceCancel : cancel).push(job);
      }
    } else if (action.type !== 'abort') {
      bitmapActions.push({ type: action.type, ...action.data } as BitmapAction);
    }
  }
  const prepared = await daemon.bitmaps.prepare(bitmapActions);
  if (named.size === 0) return prepared.commit();
  // One point in time for everything: no write from outside is in flight while the bitmaps change
  // and the jobs close their writer gates.
  await daemon.barrier.quiesce();
  try {
    await prepared.commit({ writesHeld: true });
    await Promise.all([daemon.jobs.together('complete', complete), daemon.jobs.together('cancel', cancel), daemon.jobs.together('cancel', forceCancel, true)]);
  } finally {
    daemon.barrier.release();
  }
}

export const transactionCommands = [
  command<TransactionArgs>(
    'transaction',
    struct({
      actions: arrayOf(union({}, 'type', actionData)),
      '*properties': struct({ '*completion-mode': enumOf('individual', 'grouped') }),
    }),
    transaction,
  ),
];

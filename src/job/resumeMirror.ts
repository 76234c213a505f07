import { isDeepStrictEqual } from 'node:util';
import { resolve } from 'node:path';
import { ErrorCode, JobError, StateError } from '../errors.js';
import type { DeviceSpec } from '../io/BlockDevice.js';
import { isNbdUri } from '../io/nbd/NbdUri.js';
import { recoverJobState } from '../state/recoverJobState.js';
import type { MirrorJob } from './MirrorJob.js';
import { startMirrorAt, type MirrorOptions } from './startMirror.js';

/** Options of {@link resumeMirror}: the state directory, and tuning for the resumed job. */
export interface ResumeOptions extends Omit<MirrorOptions, 'source' | 'target' | 'sync' | 'bitmap' | 'granularity' | 'state' | 'logExtentSize' | 'id'> {
  /** The state directory of the job to resume. */
  readonly state: string;
  /** If given, must name the job's source (a check against resuming the wrong directory). */
  readonly source?: string | DeviceSpec;
  /** If given, must name the job's target. */
  readonly target?: string | DeviceSpec;
}

function sameLocation(given: string | DeviceSpec, stored: string | DeviceSpec): boolean {
  if (typeof given === 'string' && typeof stored === 'string') return (isNbdUri(given) ? given : resolve(given)) === stored;
  return isDeepStrictEqual(given, stored);
}

/**
 * Resumes the job of a state directory after a crash (or a stop): copies only what the saved
 * bitmap and the activity log say may differ, then carries on as the job did, with the same
 * directory. Nothing may have written the source while the job was down. Refused when the job
 * is still running (`BM_ERR_STATE_IN_USE`), has pivoted (`BM_ERR_JOB_STATE`: the target is
 * current), or its state cannot be trusted (a {@link StateError}).
 */
export async function resumeMirror(options: ResumeOptions): Promise<MirrorJob> {
  const recovered = await recoverJobState(options.state);
  const { state } = recovered;
  if (recovered.running) {
    throw new StateError(
      ErrorCode.STATE_IN_USE,
      `the job of ${options.state} is running (process ${state.owner.pid})`,
      `stop it first; \`blockmirror status ${options.state}\` shows its progress`,
    );
  }
  if (state.phase === 'pivoted') {
    throw new JobError(ErrorCode.JOB_STATE, `the job of ${options.state} has pivoted: ${describe(state.target)} is current; there is nothing to resume`);
  }
  for (const side of ['source', 'target'] as const) {
    const given = options[side];
    if (given !== undefined && !sameLocation(given, state[side])) {
      throw new StateError(ErrorCode.STATE_MISMATCH, `${options.state} is the state of a mirror of ${describe(state.source)} to ${describe(state.target)}, not ${side} ${describe(given)}`);
    }
  }
  return startMirrorAt(
      {
        ...options,
        id: state.id,
        source: state.source,
        target: state.target,
        sync: 'bitmap',
        bitmap: recovered.bitmap,
        granularity: state.granularity,
        logExtentSize: state.extentSize,
      },
      { generation: recovered.generation, size: state.size },
    );
}

function describe(location: string | DeviceSpec): string {
  if (typeof location === 'string') return location;
  return location.kind === 'nbd' ? location.uri : location.kind === 'file' ? location.path : JSON.stringify(location);
}

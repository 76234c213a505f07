/**
 * Job states, with QEMU's JobStatus names so that QMP clients see what they expect.
 * created → running ⇄ paused; running → ready ⇄ standby; running/ready → aborting → concluded;
 * ready → waiting → pending → concluded (complete, or cancel once ready); concluded → null (dismissed).
 */
export const JobStatus = {
  CREATED: 'created',
  RUNNING: 'running',
  PAUSED: 'paused',
  READY: 'ready',
  STANDBY: 'standby',
  WAITING: 'waiting',
  PENDING: 'pending',
  ABORTING: 'aborting',
  CONCLUDED: 'concluded',
  NULL: 'null',
} as const;

export type JobStatusValue = (typeof JobStatus)[keyof typeof JobStatus];

const S = JobStatus;

/** Which state may follow which (QEMU's job state transition table, for the states a mirror uses). */
const TRANSITIONS: Readonly<Record<JobStatusValue, readonly JobStatusValue[]>> = {
  [S.CREATED]: [S.RUNNING, S.ABORTING],
  [S.RUNNING]: [S.PAUSED, S.READY, S.WAITING, S.ABORTING],
  [S.PAUSED]: [S.RUNNING, S.ABORTING],
  [S.READY]: [S.RUNNING, S.STANDBY, S.WAITING, S.ABORTING],
  [S.STANDBY]: [S.READY, S.RUNNING, S.ABORTING],
  [S.WAITING]: [S.PENDING, S.ABORTING],
  [S.PENDING]: [S.CONCLUDED, S.ABORTING],
  [S.ABORTING]: [S.CONCLUDED],
  [S.CONCLUDED]: [S.NULL],
  [S.NULL]: [],
};

/** True when a job may move from `from` to `to`. */
export function canTransition(from: JobStatusValue, to: JobStatusValue): boolean {
  return TRANSITIONS[from].includes(to);
}

/** The verbs a user can apply to a job, and the states each is allowed in. */
export const JOB_VERBS = {
  cancel: [S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY, S.WAITING, S.PENDING],
  pause: [S.CREATED, S.RUNNING, S.READY],
  resume: [S.PAUSED, S.STANDBY],
  setSpeed: [S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY],
  complete: [S.READY],
  changeCopyMode: [S.RUNNING, S.PAUSED, S.READY, S.STANDBY],
  finalize: [S.PENDING],
  dismiss: [S.CONCLUDED],
} as const satisfies Record<string, readonly JobStatusValue[]>;

export type JobVerb = keyof typeof JOB_VERBS;

/** True while the job still runs its copy loop. */
export function isActive(status: JobStatusValue): boolean {
  return status === S.RUNNING || status === S.READY || status === S.PAUSED || status === S.STANDBY;
}

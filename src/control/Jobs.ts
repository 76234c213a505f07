import type { DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { IoError, JobError } from '../errors.js';
import type { ErrorPolicy } from '../job/errorPolicy.js';
import { JOB_VERBS, JobStatus, type JobStatusValue, type JobVerb } from '../job/JobStatus.js';
import type { JobOutcome, MirrorJob } from '../job/MirrorJob.js';
import { startMirror } from '../job/startMirror.js';
import { DEFAULT_MIRROR_WORKERS } from '../sched/tuning.js';
import type { CopyMode } from '../job/TrackedDevice.js';
import { cancelAll, completeAll } from '../job/transactions.js';
import type { BlockGraph } from './BlockGraph.js';
import { wellFormedId } from './BlockGraph.js';
import type { BlockNode } from './BlockNode.js';
import { QmpError } from './qmp/QmpError.js';
import { strerror } from './strerror.js';

/** How the daemon tells its QMP clients about a job. */
export type EventSink = (name: string, data: Record<string, unknown>) => void;

/** Checked blockdev-mirror arguments, in the daemon's terms. */
export interface MirrorRequest {
  readonly id: string;
  readonly source: BlockNode;
  readonly target: BlockNode;
  readonly sync: 'full' | 'none' | 'bitmap';
  readonly bitmap?: DirtyBitmap;
  readonly copyMode: CopyMode;
  readonly speed: number;
  readonly granularity?: number;
  readonly bufferSize?: number;
  readonly onSourceError: ErrorPolicy;
  readonly onTargetError: ErrorPolicy;
  readonly autoFinalize: boolean;
  readonly autoDismiss: boolean;
}

/** QEMU's verb names in its "cannot accept command verb" message. */
const VERB_NAMES: Readonly<Record<JobVerb, string>> = {
  cancel: 'cancel',
  pause: 'pause',
  resume: 'resume',
  setSpeed: 'set-speed',
  complete: 'complete',
  changeCopyMode: 'change',
  finalize: 'finalize',
  dismiss: 'dismiss',
};

/** A mirror job as the daemon keeps it: the job, its nodes, and what QMP has been told. */
export class DaemonJob {
  readonly id: string;
  readonly job: MirrorJob;
  readonly source: BlockNode;
  readonly target: BlockNode;
  readonly autoFinalize: boolean;
  readonly autoDismiss: boolean;
  /** QMP status: the job's own, except that the end is told once the outcome is known. */
  status: JobStatusValue = JobStatus.CREATED;
  /** Set once concluded: what query-jobs reports as `error`. */
  error: string | undefined;
  /** block-job-complete was accepted in standby (QEMU allows that): complete once resumed. */
  completeOnResume = false;
  userPaused = false;

  constructor(id: string, job: MirrorJob, source: BlockNode, target: BlockNode, r: MirrorRequest) {
    this.id = id;
    this.job = job;
    this.source = source;
    this.target = target;
    this.autoFinalize = r.autoFinalize;
    this.autoDismiss = r.autoDismiss;
  }

  /** Throws QEMU's error unless the job's state allows `verb`. */
  assertVerb(verb: JobVerb): void {
    const allowed: readonly JobStatusValue[] = JOB_VERBS[verb];
    const ok = allowed.includes(this.status) || (verb === 'complete' && this.status === JobStatus.STANDBY);
    if (!ok) throw new QmpError(`Job '${this.id}' in state '${this.status}' cannot accept command verb '${VERB_NAMES[verb]}'`);
  }

  /** query-block-jobs' BlockJobInfo (with the mirror member actively-synced). */
  blockJobInfo(): Record<string, unknown> {
    const p = this.job.progress();
    const ready = this.status === JobStatus.READY || this.status === JobStatus.STANDBY;
    return {
      type: 'mirror',
      device: this.id,
      len: p.len,
      offset: p.offset,
      busy: this.job.busy,
      paused: this.job.paused || this.status === JobStatus.PENDING,
      speed: this.job.speed,
      'io-status': this.job.ioStatus,
      ready,
      status: this.status,
      'auto-finalize': this.autoFinalize,
      'auto-dismiss': this.autoDismiss,
      ...(this.error !== undefined && this.error !== 'Operation canceled' ? { error: this.error } : {}),
      'actively-synced': this.activelySynced(),
    };
  }

  /** query-jobs' JobInfo. */
  jobInfo(): Record<string, unknown> {
    const p = this.job.progress();
    return {
      id: this.id,
      type: 'mirror',
      status: this.status,
      'current-progress': p.offset,
      'total-progress': p.len,
      ...(this.error !== undefined ? { error: this.error } : {}),
      'actively-synced': this.activelySynced(),
    };
  }

  /** Source and target hold the same data and every write goes to both (write-blocking, in sync). */
  activelySynced(): boolean {
    const ready = this.status === JobStatus.READY || this.status === JobStatus.STANDBY;
    return ready && this.job.copyMode === 'write-blocking' && this.job.progress().synced;
  }
}

/**
 * The daemon's block jobs: blockdev-mirror mapped onto {@link startMirror}, QEMU's job verbs, and
 * the job's events turned into QMP events with QEMU's names, fields and order
 * (JOB_STATUS_CHANGE, BLOCK_JOB_READY, BLOCK_JOB_PENDING, BLOCK_JOB_COMPLETED,
 * BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR).
 *
 * One difference in kind: QEMU's block-job-cancel of a READY mirror without `force` ends the job
 * with BLOCK_JOB_COMPLETED and no pivot. Our job reports that as `cancelled {consistent: true}`;
 * it is told as QEMU tells it.
 */
export class Jobs {
  readonly #jobs = new Map<string, DaemonJob>();
  readonly #graph: BlockGraph;
  readonly #emit: EventSink;
  /** Jobs still running or concluding, so that stopping the daemon can wait for them. */
  readonly #settling = new Set<Promise<void>>();

  constructor(graph: BlockGraph, emit: EventSink) {
    this.#graph = graph;
    this.#emit = emit;
  }

  get list(): readonly DaemonJob[] {
    return [...this.#jobs.values()];
  }

  /** block-job-* commands: QEMU's DeviceNotActive when there is no such job. */
  blockJob(id: string): DaemonJob {
    const j = this.#jobs.get(id);
    if (!j) throw new QmpError(`Block job '${id}' not found`, 'DeviceNotActive');
    return j;
  }

  /** job-* commands: QEMU's plain "Job not found". */
  job(id: string): DaemonJob {
    const j = this.#jobs.get(id);
    if (!j) throw new QmpError('Job not found');
    return j;
  }

  async mirror(r: MirrorRequest): Promise<void> {
    if (!wellFormedId(r.id)) throw new QmpError(`Invalid job ID '${r.id}'`);
    if (this.#jobs.has(r.id)) throw new QmpError(`Job ID '${r.id}' already in use`);
    const { source, target } = r;
    if (source === target || source.chain().includes(target) || target.chain().includes(source)) throw new QmpError("Can't mirror node into itself");
    for (const n of [...source.chain(), ...target.chain()]) {
      if (n.replica !== undefined) throw new QmpError(`Node '${n.name}' is busy: it is in use by replica '${n.replica}'`);
    }
    for (const n of source.chain()) {
      if (n.job || n.targetOf) throw new QmpError(`Node '${n.name}' is busy: block device is in use by block job: mirror`);
    }
    for (const n of target.chain()) {
      if (n.job || n.targetOf) throw new QmpError(`Node '${n.name}' is busy: block device is in use by block job: mirror`);
    }
    const users = this.#graph.parentsOf(target);
    if (users.length) throw new QmpError(`Node '${target.name}' is busy: it is in use by ${users[0]!.describe}`);
    if (target.readOnly) throw new QmpError(`Node '${target.name}' is read-only`);
    if (target.size < source.size) throw new QmpError('Source and target image have different sizes');
    const src = source.leaf();
    const dst = target.leaf();
    let job: MirrorJob;
    try {
      job = await startMirror({
        id: r.id,
        source: src.spec!,
        target: dst.spec!,
        sourceDevice: src.device,
        targetDevice: dst.device,
        sync: r.sync,
        bitmap: r.bitmap,
        copyMode: r.copyMode,
        speed: r.speed,
        granularity: r.granularity,
        bufferSize: r.bufferSize,
        onSourceError: r.onSourceError,
        onTargetError: r.onTargetError,
        autoFinalize: r.autoFinalize,
        autoDismiss: r.autoDismiss,
        // QEMU's mirror copies on whatever the writer does and reports; a QMP client expects that.
        onNoConvergence: 'report',
        // Copies run on this thread, next to the exports' requests: measured to reach READY far
        // sooner under a writer than the worker pool, and no slower without one (docs/perf.md).
        // The first pass, which nothing paces, runs on worker threads as the command line's does.
        workers: 0,
        firstPassWorkers: DEFAULT_MIRROR_WORKERS,
      });
    } catch (err) {
      // QEMU creates the job before it fails to start it, and says so.
      this.#emit('JOB_STATUS_CHANGE', { status: 'created', id: r.id });
      this.#emit('JOB_STATUS_CHANGE', { status: 'null', id: r.id });
      throw new QmpError(err instanceof Error ? err.message : String(err));
    }
    const dj = new DaemonJob(r.id, job, source, target, r);
    this.#jobs.set(r.id, dj);
    source.job = { id: r.id, job, target };
    target.targetOf = r.id;
    // startMirror has started the job: tell the states QEMU reports for a new job first.
    this.#status(dj, JobStatus.CREATED);
    this.#status(dj, JobStatus.RUNNING);
    this.#watch(dj);
  }

  complete(dj: DaemonJob): void {
    dj.assertVerb('complete');
    if (dj.status === JobStatus.STANDBY) {
      dj.completeOnResume = true;
      return;
    }
    this.#run(dj, dj.job.complete());
  }

  /** block-job-cancel: a READY job without `force` ends consistent, without pivot (BLOCK_JOB_COMPLETED). */
  cancel(dj: DaemonJob, force: boolean): void {
    dj.assertVerb('cancel');
    this.#run(dj, dj.job.cancel({ force }));
  }

  async pause(dj: DaemonJob): Promise<void> {
    if (dj.userPaused) throw new QmpError('Job is already paused');
    dj.assertVerb('pause');
    dj.userPaused = true;
    await dj.job.pause();
  }

  resume(dj: DaemonJob): void {
    if (!dj.userPaused && dj.job.ioStatus === 'ok') throw new QmpError("Can't resume a job that was not paused");
    dj.assertVerb('resume');
    dj.userPaused = false;
    dj.job.resume();
  }

  setSpeed(dj: DaemonJob, speed: number): void {
    if (speed < 0) throw new QmpError("Parameter 'speed' expects a non-negative value");
    dj.assertVerb('setSpeed');
    dj.job.setSpeed(speed);
  }

  async changeCopyMode(dj: DaemonJob, mode: CopyMode): Promise<void> {
    dj.assertVerb('changeCopyMode');
    if (mode === dj.job.copyMode) return;
    if (mode !== 'write-blocking') throw new QmpError(`Change to copy mode '${mode}' is not implemented`);
    await dj.job.changeCopyMode(mode);
  }

  finalize(dj: DaemonJob): void {
    dj.assertVerb('finalize');
    dj.job.finalize();
  }

  dismiss(dj: DaemonJob): void {
    dj.assertVerb('dismiss');
    dj.job.dismiss();
  }

  /**
   * Completes (or cancels) several jobs at one point in time (the x-blockmirror- transaction
   * actions). Resolves once every job's writers are quiesced, which is that point: the jobs then
   * drain and conclude on their own, with their events.
   */
  async together(kind: 'complete' | 'cancel', jobs: readonly DaemonJob[], force = false): Promise<void> {
    if (jobs.length === 0) return;
    const leftReady = jobs.map((dj) => this.#leaves(dj, [JobStatus.READY, JobStatus.STANDBY]));
    const done = kind === 'complete' ? completeAll(jobs.map((d) => d.job)) : cancelAll(jobs.map((d) => d.job), { force });
    for (const dj of jobs) this.#track(dj, done.then(() => undefined));
    await Promise.race([Promise.all(leftReady), done]);
  }

  /** Stops every job at once (the daemon is stopping), as QEMU's quit does, and waits for the ends. */
  async cancelEverything(): Promise<void> {
    for (const dj of this.#jobs.values()) {
      if (JOB_VERBS.cancel.includes(dj.job.status as never)) this.#run(dj, dj.job.cancel({ force: true }));
    }
    while (this.#settling.size) await Promise.all([...this.#settling]);
  }

  #run(dj: DaemonJob, p: Promise<JobOutcome>): void {
    this.#track(dj, p.then(() => undefined));
  }

  #track(dj: DaemonJob, p: Promise<void>): void {
    const settled = p.catch((err: unknown) => {
      if (!(err instanceof JobError)) process.emitWarning(`job ${dj.id}: ${String(err)}`);
    });
    this.#settling.add(settled);
    void settled.finally(() => this.#settling.delete(settled));
  }

  /** Resolves once the job's QMP status is none of `states`. */
  #leaves(dj: DaemonJob, states: readonly JobStatusValue[]): Promise<void> {
    if (!states.includes(dj.status)) return Promise.resolve();
    return new Promise((resolve) => {
      const check = (): void => {
        if (states.includes(dj.job.status)) return;
        dj.job.off('status-change', check);
        resolve();
      };
      dj.job.on('status-change', check);
    });
  }

  #watch(dj: DaemonJob): void {
    const { job } = dj;
    // The end (concluded, null) is told once the outcome is known, after BLOCK_JOB_COMPLETED or
    // BLOCK_JOB_CANCELLED, as QEMU orders them; the job changes state before it settles its result.
    let held: JobStatusValue[] | undefined;
    job.on('status-change', ({ status }) => {
      if (held) {
        held.push(status);
        return;
      }
      if (status === JobStatus.CONCLUDED) {
        held = [status];
        void job.result.then((outcome) => {
          this.#conclude(dj, outcome);
          for (const s of held!) this.#status(dj, s);
          held = undefined;
          if (dj.status === JobStatus.NULL) this.#forget(dj);
        });
        return;
      }
      this.#status(dj, status);
      if (status === JobStatus.PENDING && !dj.autoFinalize) this.#emit('BLOCK_JOB_PENDING', { type: 'mirror', id: dj.id });
      if (status === JobStatus.READY && dj.completeOnResume) {
        dj.completeOnResume = false;
        this.#run(dj, job.complete());
      }
      if (status === JobStatus.NULL) this.#forget(dj);
    });
    job.on('ready', ({ len, offset }) => this.#emit('BLOCK_JOB_READY', { device: dj.id, len, offset, speed: job.speed, type: 'mirror' }));
    job.on('error', (e) => {
      this.#emit('BLOCK_JOB_ERROR', { device: dj.id, operation: e.operation === 'read' ? 'read' : 'write', action: e.action });
    });
  }

  /** The outcome is known: pivot the graph, tell QMP how it ended, release the nodes. */
  #conclude(dj: DaemonJob, outcome: JobOutcome): void {
    const { len, offset } = outcome;
    const base = { device: dj.id, len, offset, speed: dj.job.speed, type: 'mirror' };
    if (outcome.status === 'completed') this.#graph.replace(dj.source, dj.target);
    // The interceptor passes writes straight through once the job has ended: the node path goes back to its device.
    dj.source.job = undefined;
    dj.target.targetOf = undefined;
    if (outcome.status === 'failed') {
      const cause = (outcome.error as { cause?: unknown }).cause;
      dj.error = cause instanceof IoError ? strerror(cause) : outcome.error.message;
      this.#emit('BLOCK_JOB_COMPLETED', { ...base, error: dj.error });
    } else if (outcome.status === 'cancelled' && !outcome.consistent) {
      dj.error = 'Operation canceled';
      this.#emit('BLOCK_JOB_CANCELLED', base);
    } else {
      this.#emit('BLOCK_JOB_COMPLETED', base);
    }
    void dj.job.close();
  }

  #status(dj: DaemonJob, status: JobStatusValue): void {
    dj.status = status;
    this.#emit('JOB_STATUS_CHANGE', { status, id: dj.id });
  }

  #forget(dj: DaemonJob): void {
    this.#jobs.delete(dj.id);
  }
}

/**
 * blockmirror's public API. Everything a library user needs is exported from here; the rest of
 * `src` is internal and may change.
 *
 * @packageDocumentation
 */

/** Bulk copy of an image: {@link copyImage}. */
export { copyImage, DEFAULT_PROGRESS_INTERVAL_MS } from './job/copyImage.js';
export type { CopyImageOptions, CopyOptions, CopyProgress, CopyResult, IoModeOption } from './job/copyImage.js';
/** How a bulk copy chose to read and write: {@link CopyResult.io}. */
export type { IoMode, IoPlan, IoPlanChoice, PlanTrial } from './sched/IoPlanChooser.js';

/**
 * Online verify of two images, as DRBD's: {@link verifyImages} compares them chunk by chunk on the
 * worker pool and returns every differing extent and a dirty bitmap of them, which a mirror can
 * repair (save it with {@link saveBitmap}).
 */
export { verifyImages } from './job/verifyImages.js';
export type { VerifyExtent, VerifyImagesOptions, VerifyProgress, VerifyResult } from './job/verifyImages.js';

/** Live mirror: {@link startMirror} returns a {@link MirrorJob}; `job.device` is the write interceptor. */
export { startMirror, DEFAULT_BUFFER_SIZE } from './job/startMirror.js';
export type { MirrorOptions, SyncMode } from './job/startMirror.js';
/**
 * Crash-safe mirrors: with `MirrorOptions.state` a job keeps its bitmap, activity log and phase
 * in a directory (docs/activity-log.md); {@link recoverJobState} says after any crash which image
 * is current and what is left, and {@link resumeMirror} copies only that.
 */
export { resumeMirror } from './job/resumeMirror.js';
export type { ResumeOptions } from './job/resumeMirror.js';
export { recoverJobState } from './state/recoverJobState.js';
export type { RecoveredJobState } from './state/recoverJobState.js';
export { JOB_STATE_FORMAT, JOB_STATE_VERSION, readJobState, StateFiles } from './state/JobStateFile.js';
export type { JobOwner, JobPhase, JobStateRecord } from './state/JobStateFile.js';
/** The activity log: its defaults, and its file read back. */
export { ActivityLog, DEFAULT_HOT_EXTENTS, DEFAULT_LOG_EXTENT_SIZE } from './state/ActivityLog.js';
export type { ActivityLogOptions } from './state/ActivityLog.js';
export { ACTIVITY_LOG_MAGIC, ACTIVITY_LOG_VERSION, readActivityLog } from './state/ActivityLogFile.js';
export type { ActivityLogContents, ActivityLogHeader } from './state/ActivityLogFile.js';
export { DEFAULT_CHECKPOINT_INTERVAL_MS } from './state/Checkpointer.js';
/**
 * Continuous replication (docs/replication.md): {@link Replication} is the primary (a mirror per
 * disk to its secondary's export, checkpoints across all disks at one instant, outages ridden
 * out); {@link Replica} is the secondary (copy-before-write into a checkpoint buffer, failover to
 * the last checkpoint or the latest write, drills).
 */
export { DEFAULT_CHECKPOINT_TIMEOUT_MS, RECONNECT_MAX_MS, RECONNECT_MIN_MS, Replication } from './replication/Replication.js';
export type { CheckpointResult, ReplicationDisk, ReplicationEvents, ReplicationOptions, ReplicationState, ReplicationStatus } from './replication/Replication.js';
export { Replica } from './replica/Replica.js';
export type { DrillStatus, FailoverResult, ReplicaCheckpoint, ReplicaEventName, ReplicaOptions, ReplicaStatus } from './replica/Replica.js';
export { DEFAULT_REPLICA_GRANULARITY, MAX_REPLICA_GRANULARITY, MIN_REPLICA_GRANULARITY } from './replica/CheckpointBuffer.js';
/** A QMP client for control sockets (a replica's, a daemon's monitor). */
export { DEFAULT_QMP_CLIENT_TIMEOUT_MS, QmpClient, QmpReplyError } from './control/qmp/QmpClient.js';
export { MirrorJob } from './job/MirrorJob.js';
export type { JobErrorEvent, JobOutcome, MirrorJobEvents, MirrorProgress } from './job/MirrorJob.js';
/** How a mirror's first pass on the bulk copy's engine copied: {@link MirrorJob.firstPass}. */
export type { FirstPassSummary } from './job/MirrorFirstPass.js';
export { TrackedDevice } from './job/TrackedDevice.js';
export type { CopyMode } from './job/TrackedDevice.js';
export { TrackedWriter } from './job/TrackedWriter.js';
export type { SharedTracker } from './job/TrackedWriter.js';
export { JobStatus } from './job/JobStatus.js';
export type { JobStatusValue } from './job/JobStatus.js';
export type { ErrorAction, ErrorPolicy, IoStatus } from './job/errorPolicy.js';
export type { ConvergenceEvent, NoConvergencePolicy, ReadyLostEvent } from './job/MirrorController.js';
export type { TuningDecision, TuningReason } from './sched/ChunkTuner.js';
/** The share of its best rate a mirror's copy keeps while the application is busy: the default of `MirrorOptions.minCopyShare`. */
export { DEFAULT_MIN_COPY_SHARE } from './sched/ChunkTuner.js';
/** Several jobs ending at one point in time. */
export { cancelAll, completeAll } from './job/transactions.js';

/** Copy tuning: defaults, limits, and the libuv thread pool size a queue depth needs. */
export {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_COPY_WORKERS,
  DEFAULT_FLUSH_EVERY,
  DEFAULT_MIRROR_WORKERS,
  DEFAULT_QUEUE_DEPTH,
  MAX_CHUNK_SIZE,
  MIN_CHUNK_SIZE,
  threadpoolSizeFor,
} from './sched/tuning.js';
export type { CopyTuning } from './sched/tuning.js';

/** Typed errors with stable codes. */
export {
  AbortError,
  BitmapError,
  BlockmirrorError,
  DeviceError,
  ErrorCode,
  InvalidArgumentError,
  IoError,
  JobError,
  NbdError,
  STATE_HINT,
  StateError,
} from './errors.js';
export type { AbortProgress, ErrorCodeValue, IoOperation } from './errors.js';

/** Devices: what sources and targets look like to the engine. */
export type { AllocationExtent, BlockDevice, DeviceSpec, FileDeviceSpec, NbdDeviceSpec } from './io/BlockDevice.js';

// ── NBD ─────────────────────────────────────────────────────────────────────────────────────
// A client (NbdDevice: an NBD export as a BlockDevice, usable wherever a path is) and a server
// (NbdServer: any BlockDevice as an NBD export), on node:net, following NetworkBlockDevice's
// doc/proto.md and doc/uri.md. See README.md "NBD".

/** NBD URIs: `nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`. */
export { DEFAULT_LISTEN_HOST, formatNbdUri, isNbdUri, parseNbdUri } from './io/nbd/NbdUri.js';
export type { NbdAddress, NbdTcpAddress, NbdUnixAddress } from './io/nbd/NbdUri.js';

/** The client: an export as a BlockDevice ({@link NbdDevice.open}), the low-level connection, and NBD_OPT_LIST. */
export { DEFAULT_NBD_CONNECTIONS, NbdDevice } from './io/nbd/NbdDevice.js';
export type { NbdDeviceOptions } from './io/nbd/NbdDevice.js';
export { NbdConnection } from './io/nbd/NbdConnection.js';
export { DEFAULT_HANDSHAKE_TIMEOUT_MS, listNbdExports } from './io/nbd/NbdClientHandshake.js';
export type { NbdConnectOptions, NbdExportListing } from './io/nbd/NbdClientHandshake.js';
export type { NbdExportInfo } from './io/nbd/NbdExportInfo.js';

/** The server: any BlockDevice (a file, a mirror job's write interceptor) as NBD exports. */
export {
  CLIENT_READ_AHEAD_BYTES,
  DEFAULT_MAX_CLIENT_BUFFER_BYTES,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_HANDSHAKES,
  DEFAULT_MAX_REQUESTS_IN_FLIGHT,
  DEFAULT_SERVER_HANDSHAKE_TIMEOUT_MS,
  NbdServer,
  serveNbd,
} from './io/nbd/NbdServer.js';
export type { NbdExportOptions, NbdServerOptions } from './io/nbd/NbdServer.js';

/** Size parsing and formatting as the command line does it (64K, 1M, 4G). */
export { formatBytes, parseSize } from './util/size.js';

/**
 * Dirty bitmap: one bit per `granularity` bytes, in shared memory, updated with Atomics so write
 * interceptors on any thread mark it while the copier drains it ({@link DirtyBitmap},
 * {@link DirtyExtentCursor}); the successor pattern for incremental copies ({@link Succession});
 * and the persistent bitmap file ({@link saveBitmap}, {@link loadBitmap}, {@link markInUse};
 * format in docs/bitmap-format.md).
 */
export {
  DEFAULT_GRANULARITY,
  DirtyBitmap,
  MAX_BIT_COUNT,
  MAX_GRANULARITY,
  MIN_GRANULARITY,
} from './bitmap/DirtyBitmap.js';
export type { ExtentOptions, SharedBitmap, Succession } from './bitmap/DirtyBitmap.js';
/** The copier's view of a live bitmap: an ExtentSource that claims dirty extents. */
export { DirtyExtentCursor } from './bitmap/DirtyExtentCursor.js';
/** The persistent bitmap file. */
export {
  BITMAP_FILE_MAGIC,
  BITMAP_FILE_VERSION,
  BITMAP_FLAG_IN_USE,
  BITMAP_HEADER_BYTES,
  loadBitmap,
  markInUse,
  readBitmapHeader,
  saveBitmap,
} from './bitmap/BitmapFile.js';
export type { BitmapFileHeader, LoadBitmapOptions, LoadedBitmap, SaveBitmapOptions } from './bitmap/BitmapFile.js';
/**
 * The QMP daemon behind `blockmirror daemon`: `new Daemon(options)`, start-up options in
 * qemu-storage-daemon's form with {@link applyStartupOptions} (or `daemon.execute(command, args)`),
 * QMP monitors with `daemon.listenQmp(path)`, and `daemon.shutdown(reason)`.
 */
export { Daemon, QMP_VERSION } from './control/Daemon.js';
export type { DaemonOptions } from './control/Daemon.js';
export { applyStartupOptions, StartupError } from './control/startup.js';
export type { StartupOptions } from './control/startup.js';
export { QmpError } from './control/qmp/QmpError.js';
export type { QmpErrorClass } from './control/qmp/QmpError.js';
export type { QmpLimits, QmpVersion } from './control/qmp/QmpServer.js';
/** What a QMP client can make the daemon hold: the defaults of {@link QmpLimits}. */
export { MAX_PENDING_COMMANDS, MAX_QMP_CLIENTS, MAX_WRITE_BUFFER, NEGOTIATION_TIMEOUT_MS } from './control/qmp/QmpServer.js';
export { MAX_JSON_BYTES, MAX_NESTING } from './control/qmp/JsonStream.js';

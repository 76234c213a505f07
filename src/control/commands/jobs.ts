import type { ErrorPolicy } from '../../job/errorPolicy.js';
import type { CopyMode } from '../../job/TrackedDevice.js';
import type { DaemonJob } from '../Jobs.js';
import { QmpError, expects } from '../qmp/QmpError.js';
import { bool, enumOf, int, str, struct, uint32, union, type Schema } from '../qmp/schema.js';
import { command, type CommandContext } from './command.js';

const onError = enumOf('report', 'ignore', 'enospc', 'stop', 'auto');
const copyMode = enumOf('background', 'write-blocking');

interface MirrorArgs {
  'job-id'?: string;
  device: string;
  target: string;
  replaces?: string;
  sync: 'full' | 'top' | 'none' | 'incremental' | 'bitmap';
  bitmap?: string;
  'bitmap-mode'?: 'on-success' | 'never' | 'always';
  speed?: number;
  granularity?: number;
  'buf-size'?: number;
  'on-source-error'?: ErrorPolicy | 'auto';
  'on-target-error'?: ErrorPolicy | 'auto';
  'filter-node-name'?: string;
  'copy-mode'?: CopyMode;
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
  unmap?: boolean;
}

const mirrorArgs: Schema = struct({
  '*job-id': str,
  device: str,
  target: str,
  '*replaces': str,
  sync: enumOf('top', 'full', 'none', 'incremental', 'bitmap'),
  '*bitmap': str,
  '*bitmap-mode': enumOf('on-success', 'never', 'always'),
  '*speed': int,
  '*granularity': uint32,
  '*buf-size': int,
  '*on-source-error': onError,
  '*on-target-error': onError,
  '*filter-node-name': str,
  '*copy-mode': copyMode,
  '*auto-finalize': bool,
  '*auto-dismiss': bool,
  '*unmap': bool,
});

/** QEMU's 'auto' policy means the device's policy; a job has none, so it reports. */
function policy(p: ErrorPolicy | 'auto' | undefined): ErrorPolicy {
  return p === undefined || p === 'auto' ? 'report' : p;
}

async function blockdevMirror(a: MirrorArgs, { daemon }: CommandContext): Promise<void> {
  const { graph } = daemon;
  const source = graph.get(a.device);
  const target = graph.get(a.target);
  if (a.replaces !== undefined && a.replaces !== a.device) throw new QmpError("Parameter 'replaces' must name the device node: this daemon replaces nothing else");
  if (a.speed !== undefined && a.speed < 0) throw expects('speed', 'a non-negative value');
  if (a['buf-size'] !== undefined && a['buf-size'] < 0) throw new QmpError("Invalid parameter 'buf-size'");
  if (a.granularity !== undefined) {
    if (a.granularity < 512 || a.granularity > 64 << 20) throw expects('granularity', 'a value in range [512B, 64MB]');
    if ((a.granularity & (a.granularity - 1)) !== 0) throw expects('granularity', 'a power of 2');
  }
  let sync: 'full' | 'none' | 'bitmap';
  let bitmap;
  switch (a.sync) {
    case 'incremental':
      throw new QmpError("Sync mode 'incremental' not supported");
    case 'bitmap': {
      if (a.bitmap === undefined) throw new QmpError("Must provide a valid bitmap name for 'bitmap' sync mode");
      if (a['bitmap-mode'] !== undefined && a['bitmap-mode'] !== 'never') {
        throw new QmpError(`Bitmap sync mode '${a['bitmap-mode']}' is not supported: the job copies the bitmap and leaves it as it is ('never')`);
      }
      if (a.granularity !== undefined) throw new QmpError("Parameter 'granularity' must not be given with a bitmap: the bitmap's granularity is used");
      const b = source.bitmaps.get(a.bitmap);
      if (!b) throw new QmpError(`Dirty bitmap '${a.bitmap}' not found`);
      sync = 'bitmap';
      bitmap = b.bitmap;
      break;
    }
    default:
      // No backing chains here: 'top' (the top image's allocated data) is the whole image.
      if (a.bitmap !== undefined || a['bitmap-mode'] !== undefined) throw new QmpError("Parameters 'bitmap' and 'bitmap-mode' only go with sync 'bitmap'");
      sync = a.sync === 'none' ? 'none' : 'full';
  }
  // Without one, the library's default (4 KiB), not QEMU's 64 KiB for raw files: a 4 KiB write then
  // costs a 4 KiB copy, not 64 KiB, at no cost to the writer (docs/perf.md, "QMP daemon").
  const granularity = bitmap?.granularity ?? a.granularity;
  await daemon.jobs.mirror({
    id: a['job-id'] ?? a.device,
    source,
    target,
    sync,
    bitmap,
    copyMode: a['copy-mode'] ?? 'background',
    speed: a.speed ?? 0,
    granularity,
    // QEMU takes 0 for its default; a buffer smaller than one chunk still copies a chunk at a time.
    bufferSize: a['buf-size'] ? Math.max(a['buf-size'], granularity ?? 0, 1 << 20) : undefined,
    onSourceError: policy(a['on-source-error']),
    onTargetError: policy(a['on-target-error']),
    autoFinalize: a['auto-finalize'] ?? true,
    autoDismiss: a['auto-dismiss'] ?? true,
  });
}

const device = struct({ device: str });
const id = struct({ id: str });

const blockJob = (ctx: CommandContext, name: string): DaemonJob => ctx.daemon.jobs.blockJob(name);
const job = (ctx: CommandContext, name: string): DaemonJob => ctx.daemon.jobs.job(name);

export const jobCommands = [
  command<MirrorArgs>('blockdev-mirror', mirrorArgs, blockdevMirror),
  command<{ device: string }>('block-job-complete', device, (a, ctx) => ctx.daemon.jobs.complete(blockJob(ctx, a.device))),
  command<{ device: string; force?: boolean }>('block-job-cancel', struct({ device: str, '*force': bool }), (a, ctx) =>
    ctx.daemon.jobs.cancel(blockJob(ctx, a.device), a.force === true),
  ),
  command<{ device: string }>('block-job-pause', device, (a, ctx) => ctx.daemon.jobs.pause(blockJob(ctx, a.device))),
  command<{ device: string }>('block-job-resume', device, (a, ctx) => ctx.daemon.jobs.resume(blockJob(ctx, a.device))),
  command<{ device: string; speed: number }>('block-job-set-speed', struct({ device: str, speed: int }), (a, ctx) =>
    ctx.daemon.jobs.setSpeed(blockJob(ctx, a.device), a.speed),
  ),
  command<{ id: string; type: 'mirror'; 'copy-mode': CopyMode }>(
    'block-job-change',
    union({ id: str }, 'type', { mirror: { 'copy-mode': copyMode } }),
    (a, ctx) => ctx.daemon.jobs.changeCopyMode(blockJob(ctx, a.id), a['copy-mode']),
  ),
  command('query-block-jobs', undefined, (_a, ctx) => ctx.daemon.jobs.list.map((j) => j.blockJobInfo())),
  command('query-jobs', undefined, (_a, ctx) => ctx.daemon.jobs.list.map((j) => j.jobInfo())),
  command<{ id: string }>('job-complete', id, (a, ctx) => ctx.daemon.jobs.complete(job(ctx, a.id))),
  // QEMU's job-cancel is a forced cancel (block-job-cancel without force is the mirror's "finish without pivot").
  command<{ id: string }>('job-cancel', id, (a, ctx) => ctx.daemon.jobs.cancel(job(ctx, a.id), true)),
  command<{ id: string }>('job-pause', id, (a, ctx) => ctx.daemon.jobs.pause(job(ctx, a.id))),
  command<{ id: string }>('job-resume', id, (a, ctx) => ctx.daemon.jobs.resume(job(ctx, a.id))),
  command<{ id: string }>('job-finalize', id, (a, ctx) => ctx.daemon.jobs.finalize(job(ctx, a.id))),
  command<{ id: string }>('job-dismiss', id, (a, ctx) => ctx.daemon.jobs.dismiss(job(ctx, a.id))),
];

import { constants, open, stat } from 'node:fs/promises';
import { totalmem } from 'node:os';
import type { DeviceSpec } from '../io/BlockDevice.js';
import type { IoMode, IoPlanChoice } from '../sched/IoPlanChooser.js';
import type { CopyOptions } from './copyImage.js';

/** The modes a copy may choose between, most preferred first, and why there is no choice where there is none. */
export interface IoModeCandidates {
  readonly readModes: readonly IoMode[];
  readonly writeModes: readonly IoMode[];
  /** Why the plan is fixed without measuring (set only when that is not because it was asked for). */
  readonly why?: string;
  /**
   * The source is a file with less than half of it allocated (mostly holes) that takes O_DIRECT:
   * the copy scans it for holes with O_DIRECT reads, whatever the plan, and reads the data it
   * finds as the plan says (see job/BulkCopy.ts `HOLE_SCAN`).
   */
  readonly holeScan?: boolean;
  /** Why some modes were left out (added to the choice's reason). */
  readonly note?: string;
}

/**
 * An image larger than this share of memory is not written through the page cache, and one
 * larger than {@link LARGE_READ_SHARE} not read through it: its pages would push the host's other
 * pages out (nbdcopy drops what it copied from the cache; fs/promises cannot, so O_DIRECT it is).
 */
export const LARGE_WRITE_SHARE = 0.25;
export const LARGE_READ_SHARE = 0.5;

/** A source with less than this share of its size allocated is scanned for holes with O_DIRECT: they read fast that way and fill no cache. */
const SPARSE_ALLOCATED_SHARE = 0.5;

/**
 * Why a hole-scanned copy does not try page-cache writes: its trial windows hold a few dozen MiB
 * of data, which the cache takes at once, while over the whole copy the kernel throttles the
 * writes to what it writes back. Alternating runs of 64 GiB holding 1 GiB here: 3.9–4.4 s with
 * page-cache writes (which won most trials), 2.8–3.3 s with O_DIRECT ones, whose cache held only
 * the data read.
 */
const HOLE_SCAN_WRITES_NOTE = "page-cache writes not tried: a mostly-hole source's trials hold too little data to see what they cost over the copy";

/** The mode `options` ask for on one side, if they ask for one. */
export function askedMode(options: CopyOptions, side: 'readMode' | 'writeMode'): IoMode | undefined {
  if (options.direct) return 'direct';
  const mode = options[side];
  return mode === undefined || mode === 'auto' ? undefined : mode;
}

/**
 * What a copy between `source` and `target` may choose from. Only a copy between two files
 * through the worker pool chooses (an NBD export has no page cache of ours; a rate-limited copy
 * is not limited by its I/O, so measuring it would tell nothing). Ties go to O_DIRECT writes,
 * which keep the page cache small, and to buffered reads, which use what the cache already
 * holds. Of a sparse source only the data can reach the page cache (its holes are scanned with
 * O_DIRECT), so its allocated bytes, not its size, are weighed against memory.
 */
export async function ioModeCandidates(
  source: DeviceSpec,
  target: DeviceSpec,
  options: CopyOptions,
  { pooled, limited, size, memoryBytes = totalmem() }: { pooled: boolean; limited: boolean; size: number; memoryBytes?: number },
): Promise<IoModeCandidates> {
  const askedRead = askedMode(options, 'readMode');
  const askedWrite = askedMode(options, 'writeMode');
  if (source.kind !== 'file' || target.kind !== 'file' || !pooled) {
    return { readModes: [askedRead ?? 'buffered'], writeModes: [askedWrite ?? 'buffered'], why: askedRead || askedWrite ? undefined : 'not measured: an NBD export is one side' };
  }
  const [allocation, readDirect, writeDirect] = await Promise.all([
    allocationOf(source.path),
    askedRead ? Promise.resolve(true) : directSupported(source.path, false),
    askedWrite ? Promise.resolve(true) : directSupported(target.path, true),
  ]);
  const sparse = allocation.size > 0 && allocation.allocated < SPARSE_ALLOCATED_SHARE * allocation.size;
  const holeScan = sparse && readDirect && askedRead !== 'buffered';
  if (limited && !(askedRead && askedWrite)) {
    return {
      holeScan,
      readModes: [askedRead ?? 'buffered'],
      writeModes: [askedWrite ?? (writeDirect ? 'direct' : 'buffered')],
      why: 'not measured: the copy is rate-limited, so its I/O mode does not set its speed; O_DIRECT writes, where the file system takes them, keep the page cache small',
    };
  }
  const cacheable = holeScan ? Math.min(size, allocation.allocated) : size;
  const bigRead = cacheable > LARGE_READ_SHARE * memoryBytes;
  const bigWrite = cacheable > LARGE_WRITE_SHARE * memoryBytes;
  const readModes: IoMode[] = askedRead ? [askedRead] : !readDirect ? ['buffered'] : bigRead ? ['direct'] : ['buffered', 'direct'];
  const writeModes: IoMode[] = askedWrite ? [askedWrite] : !writeDirect ? ['buffered'] : bigWrite || holeScan ? ['direct'] : ['direct', 'buffered'];
  const left = [!askedWrite && writeDirect && bigWrite ? 'writes' : '', !askedRead && readDirect && bigRead ? 'reads' : ''].filter(Boolean);
  const notes = [
    left.length
      ? `page-cache ${left.join(' and ')} not tried: the image${holeScan ? "'s data" : ''} is larger than ${left.includes('reads') ? 'half' : 'a quarter'} of memory, and its pages would push the host's other pages out`
      : '',
    !askedWrite && writeDirect && holeScan && !bigWrite ? HOLE_SCAN_WRITES_NOTE : '',
  ].filter(Boolean);
  const note = notes.length ? notes.join('; ') : undefined;
  if (readModes.length === 1 && writeModes.length === 1 && !(askedRead && askedWrite)) {
    return { readModes, writeModes, holeScan, why: note ? `not measured: ${note}` : 'not measured: the file system refuses O_DIRECT, so the page cache is the only way' };
  }
  return { readModes, writeModes, holeScan, ...(note ? { note } : {}) };
}

/** A regular file's size and the bytes it has allocated (nothing for other files: a block device has no holes to find). */
async function allocationOf(path: string): Promise<{ size: number; allocated: number }> {
  const st = await stat(path);
  return st.isFile() ? { size: st.size, allocated: st.blocks * 512 } : { size: 0, allocated: 0 };
}

/** False where the file system refuses O_DIRECT (tmpfs, some FUSE and network file systems). */
async function directSupported(path: string, writable: boolean): Promise<boolean> {
  try {
    const handle = await open(path, (writable ? constants.O_RDWR : constants.O_RDONLY) | constants.O_DIRECT);
    await handle.close();
    return true;
  } catch {
    return false;
  }
}

/** The chooser's choice, with what the candidates add: why nothing was measured, what was left out, the hole scan. */
export function describeChoice(io: IoPlanChoice, modes: IoModeCandidates): IoPlanChoice {
  const reason = [modes.why ?? io.reason, modes.why ? undefined : modes.note, modes.holeScan ? 'holes found by O_DIRECT scans (the source is mostly holes)' : undefined];
  return { ...io, ...(modes.why ? { basis: 'fixed' as const } : {}), reason: reason.filter(Boolean).join('; ') };
}

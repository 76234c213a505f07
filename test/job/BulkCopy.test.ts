import { describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../src/io/BlockDevice.js';
import { BulkCopy, HOLE_SCAN } from '../../src/job/BulkCopy.js';
import { IoPlanChooser } from '../../src/sched/IoPlanChooser.js';
import { STREAM_BYTES } from '../../src/sched/tuning.js';
import type { CopyTask, CopyTaskResult } from '../../src/workers/CopyTask.js';

const MiB = 1 << 20;
const GiB = 1 << 30;

interface Stream {
  readonly offset: number;
  /** Bytes the stream was given, and bytes it copied before it stopped. */
  readonly bytes: number;
  readonly copied: number;
  /** Its largest request. */
  readonly chunk: number;
  readonly data: boolean;
  /** Streams of the same request size in flight once it was dispatched, itself included. */
  readonly alike: number;
}

/**
 * Runs a hole-scanned bulk copy of an image of holes with data over `data`, through a stand-in
 * runner that, as a copy worker does, walks each stream in order, reports extents outside `data`
 * as zeros and stops where the task says; returns the streams it was given, in the order they
 * were dispatched.
 */
async function holeScan(size: number, data: readonly [number, number]): Promise<Stream[]> {
  const streams: Stream[] = [];
  const overlapsData = (offset: number, length: number): boolean => offset < data[1] && offset + length > data[0];
  const inFlight = new Map<number, number>(); // by request size
  const runner = {
    async run(task: CopyTask): Promise<CopyTaskResult> {
      const size = task.extents[1]!;
      inFlight.set(size, (inFlight.get(size) ?? 0) + 1);
      const count = task.extents.length / 2;
      let bytes = 0;
      let zero = 0;
      let chunk = 0;
      let stoppedAt: number | undefined;
      let stoppedAtData = false;
      for (let i = 0; i < count; i++) {
        const length = task.extents[2 * i + 1]!;
        const allZero = !overlapsData(task.extents[2 * i]!, length);
        bytes += length;
        chunk = Math.max(chunk, length);
        if (allZero) zero += length;
        if (i + 1 < count && (task.stopAtZero ? allZero : task.stopAtData === true && !allZero)) {
          [stoppedAt, stoppedAtData] = [i + 1, !allZero];
          break;
        }
      }
      const given = task.extents.reduce((n, v, i) => (i % 2 === 1 ? n + v : n), 0);
      streams.push({ offset: task.extents[0]!, bytes: given, copied: bytes, chunk, data: zero < bytes, alike: inFlight.get(size)! });
      await new Promise((resolve) => setImmediate(resolve));
      inFlight.set(size, inFlight.get(size)! - 1);
      return {
        bytesWritten: bytes - zero,
        bytesZero: zero,
        readMicros: new Float64Array(count),
        writeMicros: new Float64Array(count),
        failures: [],
        ...(stoppedAt !== undefined ? { stoppedAt } : {}),
        ...(stoppedAtData ? { stoppedAtData } : {}),
      };
    },
    async close(): Promise<void> {},
  };
  const device = { size, maxRequest: 64 * MiB, flush: async () => {} } as unknown as BlockDevice;
  const copy = new BulkCopy({
    sourceSpec: { kind: 'file', path: 'src.img' },
    targetSpec: { kind: 'file', path: 'dst.img', writable: true, role: 'target' },
    source: device,
    target: device,
    tuning: { chunkSize: MiB, queueDepth: 16, workers: 1, speed: 0, flushEvery: 0 },
    runner,
    chooser: new IoPlanChooser({ size, readModes: ['direct'], writeModes: ['direct'], alignment: MiB }),
    detectZeroes: true,
    targetIsZero: true,
    streams: true,
    holeScan: true,
    started: performance.now(),
  });
  await copy.run({});
  expect(copy.bytesDone).toBe(size);
  return streams;
}

describe('BulkCopy: scanning holes', () => {
  it('doubles the length of each next stream while the streams find only holes, up to HOLE_SCAN.maxStreamBytes', async () => {
    const streams = await holeScan(16 * GiB, [15 * GiB, 15 * GiB + 64 * MiB]);
    const holes = streams.slice(0, streams.findIndex((s) => s.data));
    expect(holes[0]!.bytes).toBe(STREAM_BYTES);
    for (let i = 1; i < holes.length; i++) expect(holes[i]!.bytes).toBeGreaterThanOrEqual(holes[i - 1]!.bytes);
    expect(Math.max(...holes.map((s) => s.bytes))).toBe(HOLE_SCAN.maxStreamBytes);
  });

  it('starts again from streams of STREAM_BYTES once a stream finds data', async () => {
    const streams = await holeScan(16 * GiB, [8 * GiB, 8 * GiB + 64 * MiB]);
    const first = streams.findIndex((s) => s.data);
    expect(streams[first]!.bytes).toBeGreaterThan(STREAM_BYTES);
    // The first scan after the data (the other scan was already on its way when it was found).
    const later = streams.slice(first + 2).find((s) => s.chunk === HOLE_SCAN.chunkBytes)!;
    expect(later.offset).toBeGreaterThan(8 * GiB + 64 * MiB);
    expect(later.bytes).toBeLessThanOrEqual(STREAM_BYTES);
  });

  it('stops a scan at its first data, and copies the data in requests shaped for data', async () => {
    const streams = await holeScan(16 * GiB, [8 * GiB, 8 * GiB + 64 * MiB]);
    const scan = streams.find((s) => s.data)!;
    expect(scan.chunk).toBe(HOLE_SCAN.chunkBytes);
    expect(scan.copied).toBeLessThanOrEqual(scan.bytes);
    expect(scan.offset + scan.copied).toBe(8 * GiB + HOLE_SCAN.chunkBytes);
    // Everything after the scan's first data request, up to the data's end, in 1 MiB requests.
    const rest = streams.filter((s) => s.data && s !== scan);
    expect(rest.length).toBeGreaterThan(0);
    for (const s of rest) expect(s.chunk).toBe(MiB);
    expect(rest.reduce((n, s) => n + s.copied, 0)).toBeGreaterThanOrEqual(64 * MiB - HOLE_SCAN.chunkBytes);
  });

  it('starts streams of data as few as the scans, and doubles them with each stream that was all data', async () => {
    const streams = await holeScan(16 * GiB, [8 * GiB, 10 * GiB]);
    const data = streams.filter((s) => s.chunk === MiB);
    for (const first of data.slice(0, 3)) expect(first.alike).toBeLessThanOrEqual(HOLE_SCAN.streams);
    expect(Math.max(...data.map((s) => s.alike))).toBe(16);
  });

  it('goes on scanning while the data it found is copied', async () => {
    const streams = await holeScan(16 * GiB, [8 * GiB, 10 * GiB]);
    const firstData = streams.findIndex((s) => s.chunk === MiB);
    const lastData = streams.findLastIndex((s) => s.chunk === MiB);
    const scansBetween = streams.slice(firstData, lastData).filter((s) => s.chunk === HOLE_SCAN.chunkBytes && s.offset >= 10 * GiB);
    expect(scansBetween.length).toBeGreaterThan(0);
  });

  it('covers the image exactly once', async () => {
    const streams = await holeScan(16 * GiB, [8 * GiB, 8 * GiB + 64 * MiB]);
    const copied = streams.map((s) => [s.offset, s.offset + s.copied] as const).sort((a, b) => a[0] - b[0]);
    let at = 0;
    for (const [start, end] of copied) {
      expect(start).toBe(at);
      at = end;
    }
    expect(at).toBe(16 * GiB);
  });
});

import { writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startMirror, type ConvergenceEvent, type MirrorJob } from '../../src/index.js';
import { hashFile } from '../../src/util/imageTools.js';
import { useScratchDir } from '../helpers/scratch.js';

const KiB = 1024;
const MiB = 1 << 20;
const scratch = useScratchDir();

/** Writes random 64 KiB blocks anywhere in the image, as fast as it can, until stopped. */
function busyWriter(job: MirrorJob): { stop: () => Promise<void> } {
  let running = true;
  const block = randomBytes(64 * KiB);
  const loop = (async () => {
    while (running) {
      const offset = Math.floor(Math.random() * (job.device.size / (64 * KiB))) * 64 * KiB;
      await job.device.write(block, offset);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

/** A source and a target that starts as its copy: with `sync: 'none'` only new writes must be copied. */
async function image(size: number): Promise<{ src: string; dst: string }> {
  const dir = await scratch();
  const data = randomBytes(size);
  await writeFile(join(dir, 'src.img'), data);
  await writeFile(join(dir, 'dst.img'), data);
  return { src: join(dir, 'src.img'), dst: join(dir, 'dst.img') };
}

function until(pred: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const t = setInterval(() => pred() && (clearInterval(t), resolve()), 20);
  });
}

function nextEvent<T>(job: MirrorJob, name: 'ready' | 'ready-lost', timeoutMs = 30_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${name} event in ${timeoutMs} ms`)), timeoutMs);
    job.once(name, (e: unknown) => (clearTimeout(t), resolve(e as T)));
  });
}

describe('convergence policies on a live mirror', () => {
  it('by default (write-blocking): a writer faster than the copier makes the job switch to write-blocking, and it then gets ready', async () => {
    const { src, dst } = await image(64 * MiB);
    // The copier is held to 4 MiB/s; the writer dirties far more in the background mode it starts in.
    const job = await startMirror({ source: src, target: dst, sync: 'none', speed: 4 * MiB });
    const events: ConvergenceEvent[] = [];
    job.on('convergence', (e) => events.push(e));
    const writer = busyWriter(job);
    await new Promise<void>((resolve) => job.on('convergence', (e) => e.action === 'write-blocking' && resolve()));
    expect(job.copyMode).toBe('write-blocking');
    expect(events.find((e) => e.action === 'write-blocking')!.reason).toMatch(/not converging/);
    // Write-blocking writes reach the target themselves: the backlog can only shrink.
    await until(() => job.status === 'ready');
    await writer.stop();
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('throttle: writers are slowed until the copier gains on them, then the job gets ready', async () => {
    const { src, dst } = await image(64 * MiB);
    const job = await startMirror({ source: src, target: dst, sync: 'none', speed: 16 * MiB, onNoConvergence: 'throttle' });
    const throttles: number[] = [];
    job.on('convergence', (e) => e.action === 'throttle' && throttles.push(e.throttle));
    const writer = busyWriter(job);
    await until(() => throttles.length > 0 && job.status === 'ready' && job.progress().synced);
    await writer.stop();
    expect(throttles[0]).toBeGreaterThan(0);
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('a ready job whose backlog outgrows a second of copying drops back to running and says so, then gets ready again', async () => {
    const { src, dst } = await image(64 * MiB);
    const job = await startMirror({ source: src, target: dst });
    await nextEvent(job, 'ready');
    job.setSpeed(4 * MiB);
    const lost = nextEvent<{ backlogBytes: number; thresholdBytes: number }>(job, 'ready-lost');
    for (let i = 0; i < 48; i++) await job.device.write(randomBytes(MiB), i * MiB); // 48 MiB dirty: twelve seconds at 4 MiB/s
    const e = await lost;
    expect(e.backlogBytes).toBeGreaterThan(e.thresholdBytes);
    expect(job.status).toBe('running');
    expect(job.progress().synced).toBe(false);
    job.setSpeed(0);
    await nextEvent(job, 'ready');
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });
});

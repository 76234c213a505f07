import { writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startMirror, type JobErrorEvent, type MirrorJob, type ErrorPolicy } from '../../src/index.js';
import { FaultPlan } from '../../src/io/FaultyDevice.js';
import { hashFile } from '../../src/util/imageTools.js';
import { useScratchDir } from '../helpers/scratch.js';

const MiB = 1 << 20;
const scratch = useScratchDir();

/** A mirror whose target (or source) fails as `plan` says, on every thread. */
async function faultyMirror(side: 'source' | 'target', policy: ErrorPolicy): Promise<{ job: MirrorJob; plan: FaultPlan; src: string; dst: string; errors: JobErrorEvent[] }> {
  const dir = await scratch();
  const src = join(dir, 'src.img');
  const dst = join(dir, 'dst.img');
  await writeFile(src, randomBytes(4 * MiB));
  await writeFile(dst, Buffer.alloc(4 * MiB));
  const plan = new FaultPlan();
  const file = (path: string) => ({ kind: 'file', path, writable: true, role: side }) as const;
  const job = await startMirror({
    source: side === 'source' ? plan.wrap(file(src)) : src,
    target: side === 'target' ? plan.wrap({ ...file(dst), role: 'target' }) : dst,
    onSourceError: policy,
    onTargetError: policy,
    workers: 2,
    speed: 8 * MiB, // slow enough that faults set right after the start hit copies
    chunkSize: 256 * 1024,
  });
  const errors: JobErrorEvent[] = [];
  job.on('error', (e) => errors.push(e));
  return { job, plan, src, dst, errors };
}

/** Stopped, with the copies that were in flight when it stopped finished (their errors seen). */
function stoppedAndDrained(job: MirrorJob): Promise<void> {
  return until(job, () => job.status === 'paused' && job.progress().inFlightBytes === 0);
}

function until(job: MirrorJob, pred: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const t = setInterval(() => pred() && (clearInterval(t), resolve()), 5);
  });
}

describe('error policies', () => {
  it('report: a target write error fails the job, and the error event says report', async () => {
    const { job, plan, errors } = await faultyMirror('target', 'report');
    plan.fail('write', 'EIO');
    const outcome = await job.result;
    expect(outcome.status).toBe('failed');
    expect(errors[0]).toMatchObject({ operation: 'write', action: 'report', errno: 'EIO' });
    await job.close();
  });

  it('report: a source read error fails the job', async () => {
    const { job, plan, errors } = await faultyMirror('source', 'report');
    plan.fail('read', 'EIO');
    expect((await job.result).status).toBe('failed');
    expect(errors[0]).toMatchObject({ operation: 'read', action: 'report' });
    await job.close();
  });

  it('ignore: failed extents are retried, and once the fault heals the copy completes equal', async () => {
    const { job, plan, errors, src, dst } = await faultyMirror('target', 'ignore');
    plan.fail('write', 'EIO', { count: 5 });
    job.setSpeed(0);
    await new Promise((resolve) => job.once('ready', resolve));
    expect(errors.length).toBe(5);
    expect(errors.every((e) => e.action === 'ignore')).toBe(true);
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('stop: the job pauses with io-status failed, and completes equal after resume', async () => {
    const { job, plan, errors, src, dst } = await faultyMirror('target', 'stop');
    plan.fail('write', 'EIO');
    await stoppedAndDrained(job);
    expect(job.ioStatus).toBe('failed');
    expect(errors[0]).toMatchObject({ action: 'stop' });
    plan.heal();
    job.setSpeed(0);
    job.resume();
    expect(job.ioStatus).toBe('ok');
    await new Promise((resolve) => job.once('ready', resolve));
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('stop: ENOSPC gives io-status nospace', async () => {
    const { job, plan } = await faultyMirror('target', 'stop');
    plan.fail('write', 'ENOSPC');
    await stoppedAndDrained(job);
    expect(job.ioStatus).toBe('nospace');
    await job.cancel({ force: true });
    await job.close();
  });

  it('enospc: ENOSPC stops the job, and it completes after space is added and it is resumed', async () => {
    const { job, plan, src, dst } = await faultyMirror('target', 'enospc');
    plan.fail('write', 'ENOSPC');
    await stoppedAndDrained(job);
    expect(job.ioStatus).toBe('nospace');
    plan.heal();
    job.setSpeed(0);
    job.resume();
    await new Promise((resolve) => job.once('ready', resolve));
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });

  it('enospc: any other error is reported and fails the job', async () => {
    const { job, plan, errors } = await faultyMirror('target', 'enospc');
    plan.fail('write', 'EIO');
    expect((await job.result).status).toBe('failed');
    expect(errors[0]).toMatchObject({ action: 'report', errno: 'EIO' });
    await job.close();
  });

  it('write-blocking: a target write error on an intercepted write marks the range and applies the policy', async () => {
    const { job, plan, src, dst, errors } = await faultyMirror('target', 'ignore');
    await job.changeCopyMode('write-blocking');
    job.setSpeed(0);
    await new Promise((resolve) => job.once('ready', resolve));
    plan.fail('write', 'EIO', { count: 1 });
    await job.device.write(randomBytes(5000), 1000); // acknowledged: the source has it
    expect(errors.at(-1)).toMatchObject({ operation: 'write', action: 'ignore' });
    await job.complete();
    expect(await hashFile(dst)).toBe(await hashFile(src));
    await job.close();
  });
});

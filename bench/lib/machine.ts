import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus, totalmem, release } from 'node:os';

/** What a benchmark ran on, recorded with its results. */
export interface MachineInfo {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly node: string;
  readonly filesystem: string;
}

export function machineInfo(dir: string): MachineInfo {
  let filesystem = 'unknown';
  try {
    filesystem = execFileSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' }).trim();
  } catch {
    // stat(1) missing: leave it unknown
  }
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: availableParallelism(),
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    filesystem,
  };
}

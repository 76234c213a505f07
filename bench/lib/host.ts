/** What the benchmarks ask of the host: CPU time of children, the page cache, installed tools. */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** CPU-seconds of this process's waited-for children (cutime + cstime of /proc/self/stat). */
export function childCpuSeconds(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  // After "pid (comm) ", field 3 is state; cutime and cstime are fields 16 and 17.
  const ticks = Number(fields[16 - 3]) + Number(fields[17 - 3]);
  return ticks / CLOCK_TICKS;
}
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim() || 100);

/** CPU-seconds a running process has used so far, all its threads (utime + stime of /proc/PID/stat). */
export function processCpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / CLOCK_TICKS;
}

/** Bytes in the page cache now. */
export function cachedBytes(): number {
  const m = /^Cached:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Whether a command is installed. */
export function has(binary: string): boolean {
  return binary === process.execPath || spawnSync('sh', ['-c', `command -v ${binary}`]).status === 0;
}

/** Writes back and drops the page cache (root only); false where it cannot. */
export function dropCaches(): boolean {
  try {
    execFileSync('sync');
    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Reads a file through the page cache. */
export function warm(path: string): void {
  execFileSync('sh', ['-c', `cat '${path}' > /dev/null`]);
}

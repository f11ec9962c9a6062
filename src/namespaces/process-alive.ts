import { readFileSync } from 'node:fs';
import { isErrnoException } from '../errors.js';

export function isPid(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) > 0;
}

/** A process's start time as read from disk: clock ticks after boot. */
export function isStartTime(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

/** Whether a process with this pid exists now (in this boot; callers compare boot ids themselves). */
export function isAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, it is just not ours to signal.
    return isErrnoException(error, 'EPERM');
  }
}

/**
 * A process's state letter and start time (clock ticks after boot: with the pid, it
 * names one process of a boot, never a later one given the same pid); undefined once it
 * is gone. Read after the command name, which may hold spaces and parentheses.
 */
export function processStat(pid: number): { state: string; startTime: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 3 (state) on; field 22 is starttime.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const startTime = Number(fields[19]);
  return Number.isSafeInteger(startTime) ? { state: fields[0] as string, startTime } : undefined;
}

import { isErrnoException } from './errors.js';

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

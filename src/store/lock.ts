import path from 'node:path';
import lockfile from 'proper-lockfile';
import { ContainerVolumesError } from '../errors.js';
import { debugLock } from '../debug.js';

/**
 * A lock not refreshed for this long belongs to a dead process and is taken over.
 * The holder refreshes it every UPDATE_MS, so a live holder is never taken over.
 */
export const STALE_MS = 5_000;
const UPDATE_MS = 1_000;
/** About two and a half minutes of waiting in all before giving up. */
const RETRIES = { retries: 3_000, factor: 1.3, minTimeout: 2, maxTimeout: 50, randomize: true };

/** Callers of one process queue here, so only one of them polls the file lock. */
const queues = new Map<string, Promise<void>>();

/**
 * Runs `fn` while holding the store's lock: first the in-process queue for `root`,
 * then `proper-lockfile` on `<root>/lock`, which serialises separate processes.
 */
export async function withStoreLock<T>(root: string, fn: () => Promise<T>): Promise<T> {
  const previous = queues.get(root) ?? Promise.resolve();
  let leave!: () => void;
  const tail = previous.then(() => new Promise<void>((resolve) => (leave = resolve)));
  queues.set(root, tail);
  await previous;
  try {
    return await withFileLock(root, fn);
  } finally {
    leave();
    if (queues.get(root) === tail) queues.delete(root);
  }
}

async function withFileLock<T>(root: string, fn: () => Promise<T>): Promise<T> {
  let compromised: Error | undefined;
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(root, {
      lockfilePath: path.join(root, 'lock'),
      realpath: false,
      stale: STALE_MS,
      update: UPDATE_MS,
      retries: RETRIES,
      // The default throws from a timer and would crash the embedding process.
      onCompromised: (error) => {
        compromised = error;
        debugLock('lock on %s compromised: %s', root, error.message);
      },
    });
  } catch (error) {
    throw new ContainerVolumesError('ERR_LOCK_FAILED', `cannot lock the store at ${root}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  debugLock('locked %s', root);
  try {
    const result = await fn();
    if (compromised) {
      throw new ContainerVolumesError('ERR_LOCK_FAILED', `the lock on ${root} was lost during the operation: ${compromised.message}`);
    }
    return result;
  } finally {
    await release().catch(() => undefined);
    debugLock('unlocked %s', root);
  }
}

import path from 'node:path';
import lockfile from 'proper-lockfile';
import { ContainerVolumesError, isErrnoException } from '../errors.js';
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
/** The lock this process holds on each root, and whether it has been lost. */
const held = new Map<string, { lost?: Error }>();

/**
 * Called before every change to the store: refuses to change it without the lock, or
 * after the lock was lost (taken over as stale while we worked, e.g. when the event
 * loop stalled for longer than STALE_MS), so that what we change next can never
 * interleave with another process's changes.
 */
export function assertLockHeld(root: string): void {
  const state = held.get(root);
  if (!state) throw new Error(`internal error: the store at ${root} was about to be changed without its lock`);
  if (state.lost) {
    throw new ContainerVolumesError(
      'ERR_LOCK_FAILED',
      `the lock on ${root} was lost during the operation (${state.lost.message}); it stopped before changing anything more`,
    );
  }
}

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
  const state: { lost?: Error } = {};
  let release: () => Promise<void>;
  const options = {
    lockfilePath: path.join(root, 'lock'),
    realpath: false,
    stale: STALE_MS,
    update: UPDATE_MS,
    // The default throws from a timer and would crash the embedding process.
    onCompromised: (error: Error) => {
      state.lost = error;
      debugLock('lock on %s compromised: %s', root, error.message);
    },
  };
  try {
    // One try first: with 3,000 retries, the retry library computes every back-off
    // delay up front, which cost more than taking a free lock.
    release = await lockfile.lock(root, { ...options, retries: 0 }).catch((error: unknown) => {
      if ((error as { code?: unknown }).code !== 'ELOCKED') throw error;
      return lockfile.lock(root, { ...options, retries: RETRIES });
    });
  } catch (error) {
    if (isErrnoException(error, 'EROFS')) {
      throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `the store at ${root} is on a read-only file system: it can be read, not changed`, {
        cause: error,
      });
    }
    throw new ContainerVolumesError('ERR_LOCK_FAILED', `cannot lock the store at ${root}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  debugLock('locked %s', root);
  held.set(root, state);
  try {
    return await fn();
  } finally {
    held.delete(root);
    await release().catch(() => undefined);
    debugLock('unlocked %s', root);
  }
}

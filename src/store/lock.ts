import fs, { statSync } from 'node:fs';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { ContainerVolumesError, isErrnoException } from '../errors.js';
import { debugLock } from '../debug.js';

/**
 * A lock not refreshed for this long belongs to a dead (or paused) process and is taken
 * over. The holder refreshes it every UPDATE_MS, so a live holder is never taken over.
 */
export const STALE_MS = 5_000;
const UPDATE_MS = 1_000;
/**
 * The holder refuses to change anything once its lock is this old, a margin below
 * STALE_MS: no other process can have found it stale yet, nor can before the change,
 * which follows the check within microseconds.
 */
const MAX_AGE_MS = STALE_MS - 1_000;
/** About two and a half minutes of waiting in all before giving up. */
const RETRIES = { retries: 3_000, factor: 1.3, minTimeout: 2, maxTimeout: 50, randomize: true };

/*
 * proper-lockfile makes the lock directory `<root>/lock`, refreshes its mtime from a
 * timer and takes over one left stale. Whether the lock is still ours must be known
 * synchronously, from the lock's state on disk, at the instant before each change: the
 * flag its timer sets when the lock is lost comes too late for a process resumed after
 * a pause (SIGSTOP, a cgroup freeze, a VM pause) that goes straight on to its next
 * write. So every mtime it gives the lock is seen on its way through `fs.utimes`: the
 * lock is ours while the directory is the one we made and its mtime one we gave it.
 */

interface HeldLock {
  file: string;
  /** The lock directory we made (another holder's is another directory). */
  ino: number;
  /** The mtimes (ms) we gave it: the last one done, and one on its way. */
  mtimes: Set<number>;
  /** Why proper-lockfile found the lock lost, once it did. */
  lost?: Error;
}

/** The lock this process holds on each root. */
const held = new Map<string, HeldLock>();
const byFile = new Map<string, HeldLock>();

const observedFs = {
  ...fs,
  utimes(file: fs.PathLike, atime: fs.TimeLike, mtime: fs.TimeLike, callback: fs.NoParamCallback): void {
    const lock = byFile.get(String(file));
    const ms = mtime instanceof Date ? mtime.getTime() : undefined;
    if (lock && ms !== undefined) lock.mtimes.add(ms);
    fs.utimes(file, atime, mtime, (error) => {
      if (lock && ms !== undefined && !error) lock.mtimes = new Set([ms]);
      callback(error);
    });
  },
};

/** Callers of one process queue here, so only one of them polls the file lock. */
const queues = new Map<string, Promise<void>>();

/**
 * Called right before every change to the store, and synchronously followed by it:
 * refuses to change it without the lock, or once the lock is lost — taken over by
 * another process, removed, or not refreshed for MAX_AGE_MS (this process was paused or
 * its event loop stalled) — so that what we change next can never interleave with
 * another process's changes.
 */
export function assertLockHeld(root: string): void {
  const lock = held.get(root);
  if (!lock) throw new Error(`internal error: the store at ${root} was about to be changed without its lock`);
  const lost = lock.lost?.message ?? whyNotOurs(lock);
  if (lost !== undefined) {
    throw new ContainerVolumesError('ERR_LOCK_FAILED', `the lock on ${root} was lost during the operation (${lost}); it stopped before changing anything more`);
  }
}

/** Why the lock on disk is no longer ours, from one synchronous stat; undefined while it is. */
function whyNotOurs(lock: HeldLock): string | undefined {
  let stat: fs.Stats | undefined;
  try {
    stat = statSync(lock.file, { throwIfNoEntry: false });
  } catch (error) {
    return `its lock directory cannot be read: ${(error as Error).message}`;
  }
  if (stat === undefined) return 'its lock directory was removed';
  if (stat.ino !== lock.ino || !lock.mtimes.has(Math.round(stat.mtimeMs))) return 'another process took it over';
  const age = Date.now() - stat.mtimeMs;
  if (age >= MAX_AGE_MS) return `it was not refreshed for ${Math.round(age)} ms: this process was paused or its event loop stalled`;
  return undefined;
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
  const file = path.join(root, 'lock');
  const lock: HeldLock = { file, ino: -1, mtimes: new Set() };
  const options = {
    lockfilePath: file,
    realpath: false,
    stale: STALE_MS,
    update: UPDATE_MS,
    fs: observedFs,
    // The default throws from a timer and would crash the embedding process.
    onCompromised: (error: Error) => {
      lock.lost = error;
      debugLock('lock on %s compromised: %s', root, error.message);
    },
  };
  // Registered before locking: the first mtime may be given while the lock is taken.
  byFile.set(file, lock);
  let release: () => Promise<void>;
  try {
    // One try first: with 3,000 retries, the retry library computes every back-off
    // delay up front, which cost more than taking a free lock.
    release = await lockfile.lock(root, { ...options, retries: 0 }).catch((error: unknown) => {
      if ((error as { code?: unknown }).code !== 'ELOCKED') throw error;
      return lockfile.lock(root, { ...options, retries: RETRIES });
    });
    const stat = statSync(file);
    lock.ino = stat.ino;
    lock.mtimes.add(Math.round(stat.mtimeMs));
  } catch (error) {
    byFile.delete(file);
    if (isErrnoException(error, 'EROFS')) {
      throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `the store at ${root} is on a read-only file system: it can be read, not changed`, { cause: error });
    }
    throw new ContainerVolumesError('ERR_LOCK_FAILED', `cannot lock the store at ${root}: ${(error as Error).message}`, { cause: error });
  }
  debugLock('locked %s', root);
  held.set(root, lock);
  try {
    return await fn();
  } finally {
    held.delete(root);
    byFile.delete(file);
    await release().catch(() => undefined);
    debugLock('unlocked %s', root);
  }
}

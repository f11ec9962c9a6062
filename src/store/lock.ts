import { type BigIntStats, mkdirSync, rmdirSync, statSync, utimesSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ContainerVolumesError, isErrnoException } from '../errors.js';
import { debugLock } from '../debug.js';

/*
 * The store's lock is the directory `<root>/lock`, made with mkdir (atomic) and kept
 * fresh by setting its mtime: the protocol of proper-lockfile, which earlier versions
 * used, so processes of both kinds exclude each other. It is implemented here because
 * its holder must be able to tell, synchronously and from the lock's state on disk,
 * whether the lock is still its own at the instant before each change: a flag set by
 * an asynchronous refresh timer is set too late for a process resumed after a pause
 * (SIGSTOP, a cgroup freeze, a VM pause) that goes straight on to its next write.
 */

/** A lock not refreshed for this long belongs to a dead (or paused) process and is taken over. */
export const STALE_MS = 5_000;
/** How often the holder refreshes its lock. */
const REFRESH_MS = 1_000;
/**
 * The holder refuses to change anything once its lock is this old, a margin below
 * STALE_MS: no other process can have found it stale yet, nor can before the change,
 * which follows the check within microseconds.
 */
const MAX_AGE_MS = STALE_MS - 1_000;
/** About two and a half minutes of waiting for another holder before giving up. */
const WAIT_MS = 150_000;

interface HeldLock {
  file: string;
  /** The lock directory's identity and the mtime this process last gave it: another holder's differs. */
  ino: bigint;
  mtimeNs: bigint;
  /** Why the lock was lost, once it was. */
  lost?: string;
  timer?: NodeJS.Timeout;
}

/** Callers of one process queue here, so only one of them polls the file lock. */
const queues = new Map<string, Promise<void>>();
/** The lock this process holds on each root. */
const held = new Map<string, HeldLock>();

/**
 * Called right before every change to the store, and synchronously followed by it:
 * refuses to change it without the lock, or once the lock is lost — taken over by
 * another process, removed, or not refreshed for MAX_AGE_MS (the process was paused or
 * its event loop stalled) — so that what we change next can never interleave with
 * another process's changes. Refreshes the lock when it is due.
 */
export function assertLockHeld(root: string): void {
  const lock = held.get(root);
  if (!lock) throw new Error(`internal error: the store at ${root} was about to be changed without its lock`);
  lock.lost ??= checkLock(lock, REFRESH_MS);
  if (lock.lost !== undefined) {
    throw new ContainerVolumesError(
      'ERR_LOCK_FAILED',
      `the lock on ${root} was lost during the operation (${lock.lost}); it stopped before changing anything more`,
    );
  }
}

/**
 * Runs `fn` while holding the store's lock: first the in-process queue for `root`,
 * then the lock directory `<root>/lock`, which serialises separate processes.
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
  const lock = await acquire(root, path.join(root, 'lock'));
  debugLock('locked %s', root);
  held.set(root, lock);
  lock.timer = setInterval(() => {
    lock.lost ??= checkLock(lock, 0);
    if (lock.lost === undefined) return;
    debugLock('lock on %s lost: %s', root, lock.lost);
    clearInterval(lock.timer);
  }, REFRESH_MS).unref();
  try {
    return await fn();
  } finally {
    held.delete(root);
    release(lock);
    debugLock('unlocked %s', root);
  }
}

async function acquire(root: string, file: string): Promise<HeldLock> {
  const deadline = Date.now() + WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      mkdirSync(file);
      const stat = statSync(file, { bigint: true });
      return { file, ino: stat.ino, mtimeNs: stat.mtimeNs };
    } catch (error) {
      if (isErrnoException(error, 'EROFS')) {
        throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `the store at ${root} is on a read-only file system: it can be read, not changed`, {
          cause: error,
        });
      }
      if (!isErrnoException(error, 'EEXIST')) {
        throw new ContainerVolumesError('ERR_LOCK_FAILED', `cannot lock the store at ${root}: ${(error as Error).message}`, { cause: error });
      }
    }
    const other = statSync(file, { bigint: true, throwIfNoEntry: false });
    if (other === undefined) continue;
    if (ageMs(other.mtimeNs) > STALE_MS) {
      takeOver(file, other);
      continue;
    }
    if (Date.now() > deadline) {
      throw new ContainerVolumesError('ERR_LOCK_FAILED', `cannot lock the store at ${root}: another process has held it for over ${WAIT_MS / 1_000} s`);
    }
    // Short, growing, randomised waits: a lock is usually held for milliseconds.
    await sleep(Math.min(50, 2 * 1.3 ** attempt) * (0.5 + Math.random()));
  }
}

/**
 * Removes a stale lock left by a dead or paused process, if it is still the one found
 * stale: another process may have taken it over and made a fresh one meanwhile.
 */
function takeOver(file: string, stale: BigIntStats): void {
  const now = statSync(file, { bigint: true, throwIfNoEntry: false });
  if (now === undefined || now.ino !== stale.ino || now.mtimeNs !== stale.mtimeNs) return;
  debugLock('taking over %s, not refreshed for %d ms', file, ageMs(stale.mtimeNs));
  try {
    rmdirSync(file);
  } catch (error) {
    if (!isErrnoException(error, 'ENOENT')) throw error;
  }
}

/**
 * Whether the lock is still ours and young enough to change the store: returns why not,
 * or undefined, after refreshing it if it is older than `refreshAfterMs`. Synchronous
 * system calls only, so nothing else of this process runs between it and what follows.
 */
function checkLock(lock: HeldLock, refreshAfterMs: number): string | undefined {
  let stat: BigIntStats | undefined;
  try {
    stat = statSync(lock.file, { bigint: true, throwIfNoEntry: false });
  } catch (error) {
    return `its lock directory cannot be read: ${(error as Error).message}`;
  }
  if (stat === undefined) return 'its lock directory was removed';
  if (stat.ino !== lock.ino || stat.mtimeNs !== lock.mtimeNs) return 'another process took it over';
  const age = ageMs(lock.mtimeNs);
  if (age >= MAX_AGE_MS) return `it was not refreshed for ${Math.round(age)} ms: this process was paused or its event loop stalled`;
  if (age < refreshAfterMs) return undefined;
  try {
    const now = new Date();
    utimesSync(lock.file, now, now);
    lock.mtimeNs = statSync(lock.file, { bigint: true }).mtimeNs;
  } catch (error) {
    return `it could not be refreshed: ${(error as Error).message}`;
  }
  return undefined;
}

function release(lock: HeldLock): void {
  clearInterval(lock.timer);
  // Another process's lock, once ours was taken over, is not ours to remove.
  const stat = statSync(lock.file, { bigint: true, throwIfNoEntry: false });
  if (stat === undefined || stat.ino !== lock.ino || stat.mtimeNs !== lock.mtimeNs) return;
  try {
    rmdirSync(lock.file);
  } catch (error) {
    debugLock('removing %s failed: %s', lock.file, (error as Error).message);
  }
}

function ageMs(mtimeNs: bigint): number {
  return Date.now() - Number(mtimeNs / 1_000_000n);
}

// A process that exits holding a lock (process.exit() from the embedding application)
// removes it, so that others need not wait for it to go stale.
process.on('exit', () => {
  for (const lock of held.values()) release(lock);
});

import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, type Stats } from 'node:fs';
import { isErrnoException } from '../errors.js';
import type { DiskUsage } from '../types.js';

/** Entries between two looks at the clock and two yields to the event loop. */
const CHECK_EVERY = 256;
const PROGRESS_EVERY_MS = 200;
const OPEN_DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

interface Frame {
  fd: number;
  /** `/proc/self/fd/<fd>/`: names below a directory by its descriptor, at any depth. */
  prefix: Buffer;
  names: Buffer[];
  next: number;
}

/**
 * Walks `dir` like `du -x`. Each directory is opened with O_NOFOLLOW and its entries are
 * named through its descriptor (`/proc/self/fd/N/name`), so the walk reaches trees deeper
 * than PATH_MAX and a directory swapped for a symlink by a container while it is walked
 * is never followed out of the volume. Names are kept as bytes: a name that is not UTF-8
 * is counted like any other. An entry that vanishes meanwhile is simply not counted.
 */
export async function measureTree(
  dir: string,
  { timeout, signal, onProgress }: { timeout?: number | undefined; signal?: AbortSignal | undefined; onProgress?: ((usage: DiskUsage) => void) | undefined },
): Promise<DiskUsage> {
  const deadline = timeout === undefined ? Infinity : performance.now() + timeout;
  const usage: DiskUsage = { apparentBytes: 0, allocatedBytes: 0, files: 0, directories: 0, complete: true };
  const seenLinks = new Set<number>();
  const stack: Frame[] = [];
  const rootFd = openSync(dir, OPEN_DIRECTORY);
  try {
    const rootStat = fstatSync(rootFd);
    add(usage, rootStat);
    usage.directories++;
    stack.push(frame(rootFd));
    let visited = 0;
    let lastProgress = performance.now();
    const stop = () => signal?.aborted === true || performance.now() >= deadline;
    if (stop()) usage.complete = false;
    while (usage.complete && stack.length > 0) {
      const top = stack[stack.length - 1] as Frame;
      if (top.next >= top.names.length) {
        stack.pop();
        if (top.fd !== rootFd) closeSync(top.fd);
        continue;
      }
      const name = top.names[top.next++] as Buffer;
      if (++visited % CHECK_EVERY === 0) {
        if (stop()) {
          usage.complete = false;
          break;
        }
        const now = performance.now();
        if (onProgress && now - lastProgress >= PROGRESS_EVERY_MS) {
          lastProgress = now;
          onProgress({ ...usage });
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
      const entry = Buffer.concat([top.prefix, name]);
      const stat = ifVanished(() => lstatSync(entry));
      if (stat === undefined) continue;
      if (!stat.isDirectory()) {
        // Every link of a file is one name of one inode: its space is counted once.
        if (stat.nlink > 1) {
          if (seenLinks.has(stat.ino)) continue;
          seenLinks.add(stat.ino);
        }
        add(usage, stat);
        usage.files++;
        continue;
      }
      // Another file system mounted inside is not the volume's data (du -x).
      if (stat.dev !== rootStat.dev) continue;
      const fd = ifVanished(() => openSync(entry, OPEN_DIRECTORY));
      if (fd === undefined) continue;
      // What was opened may not be what lstat saw (swapped meanwhile): count what is walked.
      const opened = fstatSync(fd);
      if (opened.dev !== rootStat.dev) {
        closeSync(fd);
        continue;
      }
      add(usage, opened);
      usage.directories++;
      try {
        stack.push(frame(fd));
      } catch (error) {
        closeSync(fd);
        if (!isVanished(error)) throw error;
      }
    }
  } finally {
    for (const { fd } of stack) if (fd !== rootFd) closeSync(fd);
    closeSync(rootFd);
  }
  return usage;
}

function frame(fd: number): Frame {
  const prefix = Buffer.from(`/proc/self/fd/${fd}/`);
  return { fd, prefix, names: readdirSync(prefix, { encoding: 'buffer' }), next: 0 };
}

function add(usage: DiskUsage, stat: Stats): void {
  usage.apparentBytes += stat.size;
  usage.allocatedBytes += stat.blocks * 512;
}

/** Gone, or no longer a directory: a tree changing while it is walked. */
function isVanished(error: unknown): boolean {
  return ['ENOENT', 'ENOTDIR', 'ELOOP'].some((code) => isErrnoException(error, code));
}

function ifVanished<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    if (isVanished(error)) return undefined;
    throw error;
  }
}

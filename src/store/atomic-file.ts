import { closeSync, fsync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const fsyncAsync = promisify(fsync);

/*
 * The store's files are a few hundred bytes each, written under the lock. Opening,
 * writing, renaming and closing them are page-cache operations of a few microseconds,
 * done synchronously: a round trip through libuv's thread pool costs ten times that,
 * and a create made of a dozen such steps spent most of its time in those round trips.
 * Only fsync, which waits for the disk, goes to the thread pool.
 */

/**
 * Replaces `file` with `data` so that a crash at any instant leaves either the old or
 * the new content: write a temporary file beside it, fsync it, rename it over, and
 * fsync the directory so the rename itself is durable. The directories in `syncFirst`
 * are fsynced along with the temporary file, so what they hold is durable before the
 * new content can be. `beforeRename` runs synchronously before the rename, after the
 * fsyncs, and can stop it by throwing.
 */
export async function writeFileAtomic(
  file: string,
  data: string,
  { syncFirst = [], beforeRename }: { syncFirst?: readonly string[]; beforeRename?: () => void } = {},
): Promise<void> {
  const temporary = writeTemporary(file, data);
  await Promise.all([fsyncAsync(temporary.fd), ...syncFirst.map(syncDirectory)]).finally(() => closeSync(temporary.fd));
  try {
    // Right before the rename, which is what makes the new content seen.
    beforeRename?.();
  } catch (error) {
    rmSync(temporary.path, { force: true });
    throw error;
  }
  renameOver(temporary.path, file);
  await syncDirectory(path.dirname(file));
}

/**
 * Replaces `file` with `data` atomically for a process crash (old or new content,
 * never half), but not durably across a power loss: for records whose loss a reboot
 * makes harmless.
 */
export function writeFileAtomicUndurable(file: string, data: string): void {
  const temporary = writeTemporary(file, data);
  closeSync(temporary.fd);
  renameOver(temporary.path, file);
}

/** Makes a rename, unlink or mkdir in `dir` durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const fd = openSync(dir, 'r');
  await fsyncAsync(fd).finally(() => closeSync(fd));
}

/** Writes `data` to a new temporary file beside `file`; the caller closes the descriptor. */
function writeTemporary(file: string, data: string): { path: string; fd: number } {
  // A dot-name ending in .tmp: listings skip it, and it is recognisable as debris after a crash.
  const temporary = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(temporary, 'wx', 0o600);
  try {
    writeFileSync(fd, data);
  } catch (error) {
    closeSync(fd);
    rmSync(temporary, { force: true });
    throw error;
  }
  return { path: temporary, fd };
}

function renameOver(temporary: string, file: string): void {
  try {
    renameSync(temporary, file);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw error;
  }
}

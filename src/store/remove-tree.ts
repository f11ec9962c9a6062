import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { ContainerVolumesError } from '../errors.js';
import { readMountinfo } from '../mounter/mountinfo.js';

/**
 * Deletes `dir`, a directory of the store holding data written from inside containers,
 * and everything under it. Only a directory strictly inside `within` is accepted, so
 * nothing outside the store is ever deleted. A missing `dir` is already deleted.
 *
 * In-process when nothing is mounted at or below it here: fast, and it cannot reach
 * another file system. Otherwise, or when the tree is deeper than a path string can
 * name (any process in a container can make one deeper than PATH_MAX, and fs.rm then
 * fails with ENAMETOOLONG), GNU rm finishes it: it walks by descriptors (openat,
 * unlinkat), so depth does not matter, and `--one-file-system` keeps it out of any file
 * system mounted inside (callers also refuse a directory with a mount inside, which
 * catches a bind mount of the same file system).
 */
export async function removeTree(dir: string, within: string): Promise<void> {
  const relative = path.relative(within, dir);
  if (!path.isAbsolute(dir) || relative === '' || relative.startsWith('..') || path.isAbsolute(relative)) {
    throw new Error(`internal error: refusing to delete ${dir}, which is not inside ${within}`);
  }
  const mounted = (await readMountinfo()).some((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`));
  if (!mounted) {
    const done = await fs.rm(dir, { recursive: true, force: true }).then(
      () => true,
      () => false,
    );
    if (done) return;
  }
  const result = await execa('rm', ['-rf', '--one-file-system', '--', dir], { stdin: 'ignore', env: { LC_ALL: 'C' }, reject: false });
  if (result.exitCode !== 0 || result.failed) {
    throw new ContainerVolumesError(
      'ERR_STORE_UNAVAILABLE',
      `cannot delete ${dir}: rm exited with ${result.exitCode ?? result.signal ?? 'an error'}: ${String(result.stderr || result.message).trim()}`,
    );
  }
}

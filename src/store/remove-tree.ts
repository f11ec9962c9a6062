import path from 'node:path';
import { execa } from 'execa';
import { ContainerVolumesError } from '../errors.js';

/**
 * Deletes `dir`, a directory of the store holding data written from inside containers,
 * and everything under it. Any process in a container can make a tree deeper than
 * PATH_MAX, which a deletion by full path strings (fs.rm) cannot remove; GNU rm walks
 * by descriptors (openat, unlinkat), so depth does not matter. `--one-file-system`
 * keeps it out of any other file system mounted inside (callers also refuse a
 * directory with a mount inside, which catches a bind mount of the same file system).
 * Only a directory strictly inside `within` is accepted, so nothing outside the store
 * is ever deleted. A missing `dir` is already deleted.
 */
export async function removeTree(dir: string, within: string): Promise<void> {
  const relative = path.relative(within, dir);
  if (!path.isAbsolute(dir) || relative === '' || relative.startsWith('..') || path.isAbsolute(relative)) {
    throw new Error(`internal error: refusing to delete ${dir}, which is not inside ${within}`);
  }
  const result = await execa('rm', ['-rf', '--one-file-system', '--', dir], { stdin: 'ignore', env: { LC_ALL: 'C' }, reject: false });
  if (result.exitCode !== 0 || result.failed) {
    throw new ContainerVolumesError(
      'ERR_STORE_UNAVAILABLE',
      `cannot delete ${dir}: rm exited with ${result.exitCode ?? result.signal ?? 'an error'}: ${String(result.stderr || result.message).trim()}`,
    );
  }
}

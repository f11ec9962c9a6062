import fs from 'node:fs/promises';
import { ContainerVolumesError } from '../errors.js';
import { describe } from '../spec/volume-path.js';

/**
 * Checks a rootfs given to `create` and returns its real path. A rootfs of `/` would
 * mount volumes over the host itself, and one that overlaps the store would let a
 * container's mounts cover volumes or configurations: both are refused.
 */
export async function checkRootfs(given: unknown, storeRoot: string): Promise<string> {
  const invalid = (why: string, cause?: unknown) =>
    new ContainerVolumesError('ERR_INVALID_ROOTFS', `invalid rootfs ${describe(given)}: ${why}`, { cause });
  if (typeof given !== 'string' || given.includes('\0') || !given.startsWith('/')) {
    throw invalid('must be an absolute path');
  }
  let real: string;
  try {
    real = await fs.realpath(given);
  } catch (error) {
    throw invalid((error as Error).message, error);
  }
  if (!(await fs.stat(real)).isDirectory()) throw invalid('not a directory');
  if (real === '/') throw invalid("the host's / cannot be a container rootfs");
  const within = (inner: string, outer: string) => inner === outer || inner.startsWith(`${outer}/`);
  if (within(real, storeRoot) || within(storeRoot, real)) {
    throw invalid(`it overlaps the store at ${storeRoot}`);
  }
  return real;
}

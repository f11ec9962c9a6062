import { realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError, describe } from '../errors.js';

/**
 * Checks a rootfs given to `create` and returns its real path. A rootfs of `/` would
 * mount volumes over the host itself, and one that overlaps the store would let a
 * container's mounts cover volumes or configurations: both are refused. Synchronous:
 * two system calls are cheaper than two trips through libuv's thread pool.
 */
export function checkRootfs(given: unknown, storeRoot: string): string {
  const invalid = (why: string, cause?: unknown) =>
    new ContainerVolumesError('ERR_INVALID_ROOTFS', `invalid rootfs ${describe(given)}: ${why}`, { cause });
  if (typeof given !== 'string' || given.includes('\0') || !given.startsWith('/')) {
    throw invalid('must be an absolute path');
  }
  let real: string;
  try {
    real = realpathSync.native(given);
  } catch (error) {
    throw invalid((error as Error).message, error);
  }
  if (!statSync(real).isDirectory()) throw invalid('not a directory');
  const problem = rootfsProblem(real, storeRoot);
  if (problem) throw invalid(problem);
  return real;
}

/**
 * What makes a real, absolute path unusable as a rootfs, if anything. Also applied to
 * the rootfs read back from a configuration, which may have been edited since.
 */
export function rootfsProblem(rootfs: string, storeRoot: string): string | undefined {
  if (rootfs === '/') return "the host's / cannot be a container rootfs";
  if (path.posix.normalize(rootfs) !== rootfs || rootfs.endsWith('/')) return 'not in clean form';
  const within = (inner: string, outer: string) => inner === outer || inner.startsWith(`${outer}/`);
  if (within(rootfs, storeRoot) || within(storeRoot, rootfs)) return `it overlaps the store at ${storeRoot}`;
  return undefined;
}

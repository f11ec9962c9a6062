import { ContainerVolumesError, describe } from '../errors.js';
import { landingPath } from '../rootfs/open-in-rootfs.js';
import { normalizeVolumePath } from '../rules/volume-path.js';
import { checkMode } from '../rules/volumes-from.js';
import { checkIdMap } from '../rules/idmap.js';
import { isNamespaceId } from '../namespaces/mount-namespace.js';
import type { AttachRequest, AttachTarget, MountRequest, MountTarget } from './mounter.js';

/**
 * Mounters are public and may be called directly, so they check their own input: an
 * absolute rootfs and a clean container path (the same rules as a volume path).
 */
export function checkMountTarget(target: MountTarget): void {
  if (typeof target !== 'object' || target === null) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `a mount target must be an object, got ${describe(target)}`);
  }
  checkListedDir(target.rootfs, 'rootfs');
  if (normalizeVolumePath(target.path) !== target.path) {
    throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${JSON.stringify(target.path)}: not in clean form`);
  }
}

/** The directory given to `list`, or a target's rootfs: an absolute host path. */
export function checkListedDir(dir: unknown, what: 'rootfs' | 'directory' = 'directory'): void {
  if (typeof dir !== 'string' || !dir.startsWith('/') || dir.includes('\0')) {
    const code = what === 'rootfs' ? 'ERR_INVALID_ROOTFS' : 'ERR_INVALID_ARGUMENT';
    throw new ContainerVolumesError(code, `invalid ${what} ${describe(dir)}: must be an absolute host path`);
  }
}

export function checkMountRequest(request: MountRequest): void {
  checkMountTarget(request);
  if (typeof request.source !== 'string' || !request.source.startsWith('/') || request.source.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `invalid mount source ${String(request.source)}: must be an absolute path`);
  }
  // Unlike a share, a mount has no mode to inherit: it must be given.
  if (checkMode(request.mode, `the mount at ${request.path}`) === undefined) {
    throw new ContainerVolumesError('ERR_INVALID_MODE', `the mount at ${request.path} has no mode: must be 'ro' or 'rw'`);
  }
  if (request.idmap !== undefined) checkIdMap(request.idmap, `the idmap of the mount at ${request.path}`);
}

/** A process to attach in: a positive whole number (ERR_INVALID_ARGUMENT otherwise). */
export function checkPid(pid: unknown, what: string): asserts pid is number {
  if (!Number.isSafeInteger(pid) || (pid as number) <= 0) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be a process id, a whole number above 0, got ${describe(pid)}${typeof pid === 'number' ? ` ${pid}` : ''}`);
  }
}

/** The arguments of `attachAll` / `detachAll`, checked as a mount's are (a rootfs aside: the process's root is it). */
export function checkAttachTargets(pid: unknown, targets: unknown, withMode: boolean, namespace?: unknown): void {
  const method = withMode ? 'attachAll' : 'detachAll';
  checkPid(pid, `${method}: pid`);
  if (namespace !== undefined && !isNamespaceId(namespace)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${method}: namespace must be a mount namespace as the kernel names it, mnt:[<inode>], got ${describe(namespace)}`);
  }
  if (!Array.isArray(targets)) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${method} takes an array of ${withMode ? 'requests' : 'targets'}, got ${describe(targets)}`);
  for (const target of targets as (AttachTarget | AttachRequest)[]) {
    if (typeof target !== 'object' || target === null) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${method}: each entry must be an object, got ${describe(target)}`);
    }
    if (normalizeVolumePath(target.path) !== target.path) {
      throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${JSON.stringify(target.path)}: not in clean form`);
    }
    if (typeof target.source !== 'string' || !target.source.startsWith('/') || target.source.includes('\0')) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `invalid volume source ${describe(target.source)} at ${target.path}: must be an absolute path`);
    }
    if (withMode && checkMode((target as AttachRequest).mode, `the volume at ${target.path}`) === undefined) {
      throw new ContainerVolumesError('ERR_INVALID_MODE', `the volume at ${target.path} has no mode: must be 'ro' or 'rw'`);
    }
    const { idmap } = target as AttachRequest;
    if (withMode && idmap !== undefined) checkIdMap(idmap, `the idmap of the volume at ${target.path}`);
  }
}

/**
 * Each request at the path where it lands inside its rootfs: symlinks in the rootfs
 * followed there, as the container will see them (see `openInRootfs`). Two requests
 * landing on one directory of one rootfs would stack one volume on the other:
 * ERR_DUPLICATE_MOUNT_POINT. One landing on the rootfs itself (a link to `/`) would
 * cover the whole container: ERR_INVALID_VOLUME_PATH.
 */
export function landRequests<T extends MountTarget>(requests: readonly T[]): T[] {
  const taken = new Map<string, string>();
  return requests.map((request) => {
    const landed = landingPath(request.rootfs, request.path);
    if (landed === '/') {
      throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${request.path} in rootfs ${request.rootfs}: through its symlinks it is the rootfs itself`);
    }
    const key = `${request.rootfs}\0${landed}`;
    const other = taken.get(key);
    if (other !== undefined) {
      throw new ContainerVolumesError(
        'ERR_DUPLICATE_MOUNT_POINT',
        `volume paths ${other} and ${request.path} in rootfs ${request.rootfs} are one directory (${landed}) through its symlinks`,
      );
    }
    taken.set(key, request.path);
    return landed === request.path ? request : { ...request, path: landed };
  });
}

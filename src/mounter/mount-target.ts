import { ContainerVolumesError } from '../errors.js';
import { normalizeVolumePath } from '../spec/volume-path.js';
import { checkMode } from '../spec/volumes-from.js';
import type { MountRequest, MountTarget } from './mounter.js';

/**
 * Mounters are public and may be called directly, so they check their own input: an
 * absolute rootfs and a clean container path (the same rules as a volume path).
 */
export function checkMountTarget(target: MountTarget): void {
  if (typeof target.rootfs !== 'string' || !target.rootfs.startsWith('/') || target.rootfs.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ROOTFS', `invalid rootfs ${String(target.rootfs)}: must be an absolute path`);
  }
  if (normalizeVolumePath(target.path) !== target.path) {
    throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${JSON.stringify(target.path)}: not in clean form`);
  }
}

export function checkMountRequest(request: MountRequest): void {
  checkMountTarget(request);
  if (typeof request.source !== 'string' || !request.source.startsWith('/') || request.source.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `invalid mount source ${String(request.source)}: must be an absolute path`);
  }
  checkMode(request.mode, `the mount at ${request.path}`);
}

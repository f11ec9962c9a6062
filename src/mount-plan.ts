import { ContainerVolumesError } from './errors.js';
import { debugMount } from './debug.js';
import type { MountedVolume, Mounter, MountRequest } from './mounter/mounter.js';
import { compareParentsFirst } from './spec/volume-path.js';
import type { ContainerConfig } from './store/container-config.js';

/**
 * A container's mounts as data, parents first: computed from its configuration alone,
 * executed by a Mounter, and comparable in tests.
 */
export function planMounts(config: ContainerConfig, volumeDir: (volumeId: string) => string): MountRequest[] {
  return config.volumes
    .map((v) => ({ source: volumeDir(v.volumeId), rootfs: config.rootfs, path: v.path, mode: v.mode }))
    .sort((a, b) => compareParentsFirst(a.path, b.path));
}

/** Whether this very volume is mounted at the request's path; a mount the mounter cannot attribute is not ours. */
function isMountedThere(present: readonly MountedVolume[], request: MountRequest): MountedVolume | undefined {
  return present.find((m) => m.path === request.path && m.source === request.source);
}

/**
 * Makes the mounts of `plan` that are not already in place, parents first. If one
 * fails, those made by this call are undone (children first) and the error names the
 * path.
 */
export async function applyPlan(mounter: Mounter, plan: readonly MountRequest[]): Promise<void> {
  const first = plan[0];
  if (first === undefined) return;
  const present = await mounter.list(first.rootfs);
  const made: MountRequest[] = [];
  for (const request of plan) {
    if (isMountedThere(present, request)?.mode === request.mode) continue;
    try {
      await mounter.mount(request);
    } catch (error) {
      await revertPlan(mounter, made);
      throw namingPath(error, 'ERR_MOUNT_FAILED', `mounting ${request.path} in rootfs ${request.rootfs} failed`);
    }
    made.push(request);
  }
}

/**
 * Unmounts what of `plan` is mounted, children first. If one fails, those unmounted
 * by this call are mounted again so the container is left as it was.
 */
export async function removePlan(mounter: Mounter, plan: readonly MountRequest[]): Promise<void> {
  const first = plan[0];
  if (first === undefined) return;
  const present = await mounter.list(first.rootfs);
  const removed: MountRequest[] = [];
  for (const request of [...plan].reverse()) {
    if (!isMountedThere(present, request)) continue;
    try {
      await mounter.unmount(request);
    } catch (error) {
      await restore(mounter, removed.reverse());
      throw namingPath(error, 'ERR_UNMOUNT_FAILED', `unmounting ${request.path} in rootfs ${request.rootfs} failed`);
    }
    removed.push(request);
  }
}

/** Best effort by nature: it runs while another error is already on its way to the caller. */
async function revertPlan(mounter: Mounter, made: readonly MountRequest[]): Promise<void> {
  for (const request of [...made].reverse()) {
    await mounter.unmount(request).catch((e: Error) => debugMount('rollback: unmounting %s failed: %s', request.path, e.message));
  }
}

async function restore(mounter: Mounter, removed: readonly MountRequest[]): Promise<void> {
  for (const request of removed) {
    await mounter.mount(request).catch((e: Error) => debugMount('rollback: remounting %s failed: %s', request.path, e.message));
  }
}

/** Our own errors already name the path and carry the precise code; a custom mounter's are wrapped. */
function namingPath(error: unknown, code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', message: string): Error {
  if (error instanceof ContainerVolumesError) return error;
  return new ContainerVolumesError(code, `${message}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}

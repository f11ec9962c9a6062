import fs from 'node:fs/promises';
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

/**
 * The topmost mount at the request's path (the one a process in the container sees),
 * if it is this very volume. The mounter names the source by a host path, which may be
 * another path to the same directory (the store reached through another bind mount),
 * so differing paths are compared by identity. A mount the mounter cannot attribute is
 * never ours.
 */
export async function mountedThere(present: readonly MountedVolume[], request: MountRequest): Promise<MountedVolume | undefined> {
  const top = present.filter((m) => m.path === request.path).pop();
  return top && (await sameDirectory(top.source, request.source)) ? top : undefined;
}

async function sameDirectory(a: string | undefined, b: string): Promise<boolean> {
  if (a === undefined) return false;
  if (a === b) return true;
  try {
    const [x, y] = await Promise.all([fs.stat(a), fs.stat(b)]);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The plan's mounts that are in place now. */
export async function mountedOf(mounter: Mounter, plan: readonly MountRequest[]): Promise<MountRequest[]> {
  const first = plan[0];
  if (first === undefined) return [];
  const present = await mounter.list(first.rootfs);
  const found: MountRequest[] = [];
  for (const request of plan) if (await mountedThere(present, request)) found.push(request);
  return found;
}

/**
 * Makes the mounts of `plan` that are not already in place, parents first, in one
 * batch when the mounter can. `guard` runs before mounting and once after (it throws
 * when the store's lock was lost). If anything fails, the mounts made by this call are
 * undone (children first) and the error names the path.
 */
export async function applyPlan(mounter: Mounter, plan: readonly MountRequest[], guard: () => void): Promise<void> {
  const first = plan[0];
  if (first === undefined) return;
  const present = await mounter.list(first.rootfs);
  const missing: MountRequest[] = [];
  for (const request of plan) if ((await mountedThere(present, request))?.mode !== request.mode) missing.push(request);
  if (missing.length === 0) return;
  const made = mounter.mountAll ? await mountBatch(mounter, mounter.mountAll, missing, guard) : await mountEach(mounter, missing, guard);
  try {
    guard();
  } catch (error) {
    await revertPlan(mounter, made);
    throw error;
  }
}

async function mountBatch(
  mounter: Mounter,
  mountAll: NonNullable<Mounter['mountAll']>,
  requests: readonly MountRequest[],
  guard: () => void,
): Promise<readonly MountRequest[]> {
  guard();
  try {
    await mountAll.call(mounter, requests);
  } catch (error) {
    const { rootfs } = requests[0] as MountRequest;
    throw namingPath(error, 'ERR_MOUNT_FAILED', `mounting the volumes of rootfs ${rootfs} failed`);
  }
  return requests;
}

async function mountEach(mounter: Mounter, requests: readonly MountRequest[], guard: () => void): Promise<readonly MountRequest[]> {
  const made: MountRequest[] = [];
  for (const request of requests) {
    try {
      guard();
      await mounter.mount(request);
    } catch (error) {
      await revertPlan(mounter, made);
      throw namingPath(error, 'ERR_MOUNT_FAILED', `mounting ${request.path} in rootfs ${request.rootfs} failed`);
    }
    made.push(request);
  }
  return made;
}

/**
 * Unmounts what of `plan` is mounted, children first, in one batch when the mounter
 * can, running `guard` first. If that fails, what this call unmounted is mounted
 * again so the container is left as it was.
 */
export async function removePlan(mounter: Mounter, plan: readonly MountRequest[], guard: () => void): Promise<void> {
  const mounted = (await mountedOf(mounter, plan)).reverse();
  if (mounted.length === 0) return;
  if (mounter.unmountAll) {
    guard();
    try {
      await mounter.unmountAll(mounted);
    } catch (error) {
      const still = await mountedOf(mounter, plan).catch(() => plan);
      await restore(mounter, mounted.filter((m) => !still.includes(m)).reverse());
      throw namingPath(error, 'ERR_UNMOUNT_FAILED', `unmounting the volumes of rootfs ${(mounted[0] as MountRequest).rootfs} failed`);
    }
    return;
  }
  const removed: MountRequest[] = [];
  for (const request of mounted) {
    try {
      guard();
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
  if (mounter.unmountAll) {
    await mounter.unmountAll([...made].reverse()).catch((e: Error) => debugMount('rollback: unmounting failed: %s', e.message));
    return;
  }
  for (const request of [...made].reverse()) {
    await mounter.unmount(request).catch((e: Error) => debugMount('rollback: unmounting %s failed: %s', request.path, e.message));
  }
}

async function restore(mounter: Mounter, removed: readonly MountRequest[]): Promise<void> {
  if (removed.length === 0) return;
  if (mounter.mountAll) {
    await mounter.mountAll(removed).catch((e: Error) => debugMount('rollback: remounting failed: %s', e.message));
    return;
  }
  for (const request of removed) {
    await mounter.mount(request).catch((e: Error) => debugMount('rollback: remounting %s failed: %s', request.path, e.message));
  }
}

/** Our own errors already name the path and carry the precise code; a custom mounter's are wrapped. */
function namingPath(error: unknown, code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', message: string): Error {
  if (error instanceof ContainerVolumesError) return error;
  return new ContainerVolumesError(code, `${message}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}

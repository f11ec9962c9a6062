import path from 'node:path';
import type { Context } from '../context.js';
import { ContainerVolumesError } from '../errors.js';
import type { MountedVolume, MountRequest } from '../mounter/mounter.js';
import { landingPath } from '../rootfs/open-in-rootfs.js';
import { isBelow } from '../rules/volume-path.js';
import { isId } from '../rules/ids.js';
import type { ContainerConfig } from '../store/container-config.js';

/*
 * Whose is a mount? Two containers may share a rootfs, and a rootfs may lie inside
 * another container's rootfs, so the mounts found under a rootfs are not all its
 * container's. A mount belongs to the container meant to be mounted that has that very
 * volume at that very host path (its rootfs joined with the container path).
 */

/** The store volume a mount shows, if its source is one of the store's volume directories. */
export function volumeIdOf(ctx: Context, source: string | undefined): string | undefined {
  if (source === undefined || path.dirname(source) !== path.join(ctx.store.root, 'volumes')) return undefined;
  const id = path.basename(source);
  return isId(id) ? id : undefined;
}

/**
 * The container other than `exceptId` that holds `mount`, found under `rootfs`, with its
 * path there. Only the users of the mounted volume are read (the reference index names
 * them), so the cost does not grow with the store.
 */
export async function holderOf(
  ctx: Context,
  rootfs: string,
  mount: MountedVolume,
  exceptId: string,
): Promise<{ containerId: string; path: string } | undefined> {
  const volumeId = volumeIdOf(ctx, mount.source);
  if (volumeId === undefined) return undefined;
  const at = path.join(rootfs, mount.path);
  for (const containerId of ctx.store.index.candidates(volumeId)) {
    if (containerId === exceptId) continue;
    const config = await ctx.store.readContainer(containerId).catch((error: unknown) => {
      if (error instanceof ContainerVolumesError && error.code === 'ERR_CONTAINER_NOT_FOUND') return undefined;
      throw error;
    });
    if (!config?.mounted) continue;
    // Where its volume lands in its rootfs, symlinks there followed, as it was mounted.
    const use = config.volumes.find((v) => v.volumeId === volumeId && path.join(config.rootfs, landedOrGiven(config.rootfs, v.path)) === at);
    if (use) return { containerId, path: use.path };
  }
  return undefined;
}

function landedOrGiven(rootfs: string, containerPath: string): string {
  try {
    return landingPath(rootfs, containerPath);
  } catch {
    return containerPath; // a rootfs or path that cannot be walked any more: judged by the path given
  }
}

/**
 * Refuses to mount `config` where another container's mount already is: at one of its
 * paths, above one (this container's mount would land inside the other's volume) or
 * below one (it would hide the other's). Stacking would make `unmount` of either
 * container take or leave the wrong mount. `present` is what is mounted under the
 * rootfs now; a mount that is this container's own (it is mounted here — `mountedHere`
 * — and the mount is its volume at its path) is not looked into.
 */
export async function checkMountPointsFree(
  ctx: Context,
  config: ContainerConfig,
  plan: readonly MountRequest[],
  present: readonly MountedVolume[],
  mountedHere: boolean,
): Promise<void> {
  for (const mount of present) {
    const request = plan.find((r) => r.path === mount.path || isBelow(r.path, mount.path) || isBelow(mount.path, r.path));
    if (request === undefined) continue;
    if (mountedHere && request.path === mount.path && volumeIdOf(ctx, mount.source) === path.basename(request.source)) continue;
    const holder = await holderOf(ctx, config.rootfs, mount, config.id);
    if (holder === undefined) continue;
    throw new ContainerVolumesError(
      'ERR_MOUNT_POINT_IN_USE',
      `cannot mount container ${config.id}: its volume at ${request.path} in rootfs ${config.rootfs} would meet the mount of container ${holder.containerId} at ${mount.path} (its volume at ${holder.path}); unmount that container first`,
    );
  }
}

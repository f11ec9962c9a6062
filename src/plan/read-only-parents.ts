import { closeSync, openSync } from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError } from '../errors.js';
import { O_PATH_DIRECTORY, openChild } from '../rootfs/open-in-rootfs.js';
import { isBelow } from '../rules/volume-path.js';
import type { Origin, VolumeMount } from '../types.js';

/**
 * The mount point of a volume nested in another is a directory of that other volume.
 * Where the container holds that volume read-only and the nested volume comes from
 * elsewhere (its own, or another source's), the mount point must already be there:
 * making it would write into a volume the container may only read, for a layout that
 * is not the volume owner's (runc fails with EROFS in this case). Checked when a
 * container gets its volumes and again at every mount, before anything is made. When
 * both come from one source, the mount point is part of that source's own layout (its
 * own mount makes it), and a `:ro` consumer, such as a backup handler, makes it too.
 */
export function checkReadOnlyParents(containerId: string, volumes: readonly VolumeMount[], volumeDir: (volumeId: string) => string, rootfs: string): void {
  for (const volume of volumes) {
    const parent = volumes.filter((p) => isBelow(volume.path, p.path)).sort((a, b) => b.path.length - a.path.length)[0];
    if (parent === undefined || parent.mode !== 'ro' || sameOrigin(parent.origin, volume.origin)) continue;
    const relative = path.posix.relative(parent.path, volume.path);
    if (existsIn(volumeDir(parent.volumeId), relative, rootfs, volume.path)) continue;
    throw new ContainerVolumesError(
      'ERR_MOUNT_POINT_READ_ONLY',
      `container ${containerId} cannot have a volume at ${volume.path} in rootfs ${rootfs}: its mount point ${relative} does not exist in the volume it holds read-only at ${parent.path}, and nothing is created in a read-only volume`,
    );
  }
}

function sameOrigin(a: Origin, b: Origin): boolean {
  return a === 'created' || b === 'created' ? a === b : a.from === b.from;
}

/** Whether `relative` is a directory inside the volume directory `dir`, following no symlink (a symlink is refused as in a rootfs). */
function existsIn(dir: string, relative: string, rootfs: string, containerPath: string): boolean {
  let fd: number;
  try {
    fd = openSync(dir, O_PATH_DIRECTORY);
  } catch (error) {
    throw new ContainerVolumesError('ERR_VOLUME_NOT_FOUND', `the volume directory ${dir} cannot be opened: ${(error as Error).message}`, { cause: error });
  }
  try {
    for (const name of relative.split('/')) {
      const next = openChild(fd, name, false, rootfs, containerPath);
      if (next === null) return false;
      closeSync(fd);
      fd = next;
    }
    return true;
  } finally {
    closeSync(fd);
  }
}

import path from 'node:path';
import type { MountRequest } from '../mounter/mounter.js';
import { openInRootfs } from '../rootfs/open-in-rootfs.js';
import { isBelow } from '../rules/volume-path.js';

/**
 * Makes the mount point of each of a container's volumes, landed and parents first, as
 * BindMounter makes them before mounting, for a runtime that mounts the volumes itself
 * from entries that then need not create anything. A nested volume's mount point is made
 * in its parent volume's own directory: that parent may reach the container read-only,
 * where the runtime could not make it. Nothing follows a symlink: a link found on the
 * way, in the rootfs or in a parent volume (where a container can put one), is
 * ERR_PATH_ESCAPES_ROOTFS before anything is made through it.
 */
export function makeMountPoints(placed: readonly MountRequest[]): void {
  placed.forEach((mount, i) => {
    const parent = placed
      .slice(0, i)
      .filter((p) => p.rootfs === mount.rootfs && isBelow(mount.path, p.path))
      .pop();
    const dir = parent
      ? openInRootfs(parent.source, `/${path.posix.relative(parent.path, mount.path)}`, { create: true, follow: false })
      : openInRootfs(mount.rootfs, mount.path, { create: true, follow: false });
    dir.close();
  });
}

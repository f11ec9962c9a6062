import { ContainerVolumesError } from '../errors.js';
import type { MountRequest } from '../mounter/mounter.js';
import { volumeMountOptions } from '../rules/mount-options.js';

/**
 * LXC reads `lxc.mount.entry` values back with glibc's getmntent_r, which splits
 * fields on blanks and decodes exactly these four octal escapes: a path holding any
 * of them would otherwise shift the fields (or, for a newline, end the config line).
 */
const FSTAB_ESCAPES: Record<string, string> = { ' ': '\\040', '\t': '\\011', '\n': '\\012', '\\': '\\134' };

function fstabEscape(value: string): string {
  return value.replace(/[ \t\n\\]/g, (c) => FSTAB_ESCAPES[c] as string);
}

/**
 * A container's mounts, as `placeMounts` lands them, as `lxc.mount.entry` config lines,
 * parents before children (LXC mounts entries in the order they appear). The
 * destination is relative, so LXC joins it to the container's rootfs. LXC refuses a
 * symlink on the way (safe_mount) where Docker follows it inside the rootfs: each
 * destination is where the path lands in the rootfs as it is now, symlinks followed
 * there (`/var/run/x` is written `run/x` when `/var/run -> ../run`). No `create=dir`:
 * LXC's runs `mkdir -p` on the host path, through any link a container left in a
 * volume, and inside a read-only parent volume it cannot; the mount points are made
 * beforehand, safely (`makeMountPoints`). No `optional`: a missing volume directory or
 * mount point must stop the container, not start it without its data. LXC 5.0 applies
 * `nosuid,nodev` to a `rw` bind only when the store's own mount has them (see
 * docs/other-runtimes.md). A container with a user-namespace mapping is refused
 * (ERR_IDMAP_UNSUPPORTED): `who` names it.
 */
export function lxcMountEntries(placed: readonly MountRequest[], who: string): string[] {
  if (placed.some((mount) => mount.idmap)) {
    // Plain entries would have LXC mount the volumes without the mapping: every owner wrong inside.
    throw new ContainerVolumesError(
      'ERR_IDMAP_UNSUPPORTED',
      `${who} declares a user-namespace mapping (idmap), and lxcMountEntries writes no idmapped entries: mount it with BindMounter's kernel engine, or give it to runc with ociMounts`,
    );
  }
  return placed.map((mount) => {
    const source = fstabEscape(mount.source);
    const destination = fstabEscape(mount.path.slice(1));
    return `lxc.mount.entry = ${source} ${destination} none ${['bind', ...volumeMountOptions(mount.mode)].join(',')} 0 0`;
  });
}

import { compareParentsFirst } from '../rules/volume-path.js';
import type { ContainerInfo } from '../types.js';

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
 * The container's volumes as `lxc.mount.entry` config lines, parents before children
 * (LXC mounts entries in the order they appear). The destination is relative, so LXC
 * joins it to the container's rootfs and (safe_mount) refuses a symlink on the way, as
 * the library's own mounters do; `create=dir` makes a missing mount point, as they do.
 */
export function lxcMountEntries(container: ContainerInfo, hostPathOf: (volumeId: string) => string): string[] {
  return [...container.volumes]
    .sort((a, b) => compareParentsFirst(a.path, b.path))
    .map((volume) => {
      const source = fstabEscape(hostPathOf(volume.volumeId));
      const destination = fstabEscape(volume.path.slice(1));
      return `lxc.mount.entry = ${source} ${destination} none bind,create=dir,${volume.mode},nosuid,nodev 0 0`;
    });
}

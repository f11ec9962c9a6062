import { planMounts } from '../plan/mount-plan.js';
import { VOLUME_MOUNT_PROPAGATION, volumeMountOptions } from '../rules/mount-options.js';
import { copyIdMap } from '../rules/idmap.js';
import type { ContainerInfo, IdMapping } from '../types.js';

/** One entry of the `mounts` array of an OCI runtime-spec `config.json`. */
export interface OciMount {
  /** The container path. */
  destination: string;
  /** Always a bind mount. */
  type: 'bind';
  /** The volume's host directory. */
  source: string;
  /** Mount options: `bind`, the mode (`ro` or `rw`), `nosuid`, `nodev`, `rprivate`, and `idmap` for a container with a mapping. */
  options: string[];
  /** The container's uid mapping, for a container that has one: the runtime idmaps the mount with it (runc 1.2 and later). */
  uidMappings?: IdMapping[];
  /** The container's gid mapping, with `uidMappings`. */
  gidMappings?: IdMapping[];
}

/**
 * The container's volumes as OCI `mounts` entries, parents before children, for a
 * runtime such as runc to apply itself in the container's own mount namespace.
 * `hostPathOf` gives a volume's directory on the host. Destinations are the paths the
 * configuration gives: runc resolves them inside the rootfs, following symlinks there
 * and never out of it, as BindMounter does, so both land on the same directory.
 */
export function ociMounts(container: ContainerInfo, hostPathOf: (volumeId: string) => string): OciMount[] {
  return planMounts(container, hostPathOf).map((mount) => ({
    destination: mount.path,
    type: 'bind',
    source: mount.source,
    // 'bind', not 'rbind': runc (1.1) applies 'ro' by remounting the top mount
    // only, so with 'rbind' anything mounted inside a volume directory on the host
    // would reach the container writable, and without nosuid/nodev, even through a
    // ':ro' share (checked with runc 1.1.5, test/real/runc.test.ts). Nested volumes
    // do not need recursion: each is its own entry, and runc mounts them in order,
    // the child inside the container on top of the parent's bind. BindMounter's
    // mounts are non-recursive too, so both ways of mounting give the same view.
    options: ['bind', ...volumeMountOptions(mount.mode), `r${VOLUME_MOUNT_PROPAGATION}`, ...(mount.idmap ? ['idmap'] : [])],
    // The mount's own mapping, as the runtime spec has it since 1.2, is the container's:
    // the mount shows the ids on disk as the container's ids, as BindMounter's does.
    // 'idmap' (not 'ridmap': the bind is not recursive) also makes a runtime that does
    // not know these fields fail on an unknown option rather than ignore them.
    ...(mount.idmap ? copyIdMap(mount.idmap) : {}),
  }));
}

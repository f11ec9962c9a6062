import type { Mode } from '../types.js';

/**
 * What every volume mount is asked to be, whoever makes it (either engine of
 * BindMounter, an OCI runtime, LXC): its mode, no set-uid programs and no device files
 * (as Podman mounts volumes), and private propagation, so that a mount made inside a
 * volume never travels back to the host or to another container. LXC 5.0 is the
 * exception: it makes its mounts shared within the container's own namespace, and a
 * `rw` bind gets `nosuid,nodev` only from the store's mount (docs/other-runtimes.md).
 */
export const VOLUME_MOUNT_FLAGS = ['nosuid', 'nodev'] as const;
export const VOLUME_MOUNT_PROPAGATION = 'private';

/** The per-mount options of a volume mount, as mountinfo shows them and `mount -o` takes them. */
export function volumeMountOptions(mode: Mode): string[] {
  return [mode, ...VOLUME_MOUNT_FLAGS];
}

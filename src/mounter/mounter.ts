import type { IdMap, Mode } from '../types.js';

/** One volume to attach: the volume's directory, the container's rootfs, the container path and the mode. */
export interface MountRequest {
  /** Host directory of the volume (`<root>/volumes/<id>`). */
  source: string;
  /** Host directory of the container's root filesystem. */
  rootfs: string;
  /** Absolute, clean container path (`/var/lib/postgres`). */
  path: string;
  /** `'ro'` attaches the volume read-only, `'rw'` read-write; required (ERR_INVALID_MODE otherwise). */
  mode: Mode;
  /**
   * The user namespace of the container, when it has one: the mount must be idmapped
   * with it (MOUNT_ATTR_IDMAP), so that an id on disk is that id inside the container.
   * The library gives it only to a mounter whose `supportsIdmap` is true
   * (ERR_IDMAP_UNSUPPORTED otherwise, before anything is mounted).
   */
  idmap?: IdMap;
}

/** Where a volume is attached: a container path inside a rootfs. */
export interface MountTarget {
  /** Host directory of the container's root filesystem, absolute (ERR_INVALID_ROOTFS otherwise). */
  rootfs: string;
  /** Absolute, clean container path (ERR_INVALID_VOLUME_PATH otherwise), resolved inside the rootfs as `mount` resolves it. */
  path: string;
}

/** A volume in the mount namespace of a running process: its directory and its path inside that process's root. */
export interface AttachTarget {
  /** Host directory of the volume (`<root>/volumes/<id>`): a mount there is this volume when it shows this directory. */
  source: string;
  /** Absolute, clean container path, resolved inside the process's root as a process there sees it. */
  path: string;
}

/** One volume to attach in the mount namespace of a running process. */
export interface AttachRequest extends AttachTarget {
  /** `'ro'` attaches it read-only from its first instant, `'rw'` read-write. */
  mode: Mode;
  /** As `MountRequest.idmap`: the mount must be idmapped with this mapping (given only to a mounter whose `supportsIdmap` is true). */
  idmap?: IdMap;
}

/** One mount found under a directory. */
export interface MountedVolume {
  /** Absolute path relative to the directory that was listed (a container path when that is a rootfs). */
  path: string;
  /** `'ro'` when the mount itself is read-only (its mount flag), else `'rw'`. */
  mode: Mode;
  /** Host directory mounted there, when the mounter can tell; a mount without one is never taken for a volume. */
  source?: string;
  /**
   * The mount options in effect, when the mounter can tell. A mount of a volume without
   * `nosuid` and `nodev` is half-made (its maker died between bind and remount): it is
   * replaced, never taken as in place.
   */
  options?: string[];
  /**
   * Its propagation tags, when the mounter can tell (`shared:N`, `master:N`; none for a
   * private mount): a mount on a shared rootfs has copies in the peers and slaves of
   * that rootfs, which share its `N` and go away with it.
   */
  propagation?: string[];
}

/**
 * Attaches volume directories inside container root filesystems.
 *
 * The library calls a mounter only while it holds the store's lock, one call at a
 * time per store, parents before children on mount and children before parents on
 * unmount. Implement `mount`, `unmount` and `list` to plug in another mechanism (an
 * LXC configuration writer, an agent on another host); implement `mountAll` and
 * `unmountAll` too when a whole container's mounts are cheaper in one go (BindMounter
 * makes them in a constant number of processes). Run `mounterContract` from
 * `container-volumes/testing` against it.
 *
 * Requests can gain fields over time; one a mounter written before would ignore
 * silently changes what the container sees, so each comes with a capability the
 * mounter declares, and the library refuses to hand such a request to a mounter that
 * does not declare it: `supportsIdmap` for `MountRequest.idmap`.
 */
export interface Mounter {
  /**
   * Optional: true when `mount` and `mountAll` apply `MountRequest.idmap` (an idmapped
   * mount with that user namespace's mapping), and fail rather than mount without it.
   * Absent or false: the library refuses to mount a container that declares a mapping
   * (ERR_IDMAP_UNSUPPORTED), before anything is mounted. BindMounter: true with its
   * kernel engine, false with util-linux.
   */
  readonly supportsIdmap?: boolean;

  /**
   * Attaches `source` at `<rootfs><path>`, `path` resolved inside the rootfs as the
   * container will see it: symlinks there followed, never out of the rootfs (an absolute
   * link target or `..` is clamped to its root). BindMounter refuses a rootfs whose own
   * host path holds a symlink (ERR_INVALID_ROOTFS), a path that lands on the rootfs
   * itself (ERR_INVALID_VOLUME_PATH) and more than 40 links on the way
   * (ERR_PATH_ESCAPES_ROOTFS). Missing directories on the way are created inside the
   * rootfs (below a read-only mount made earlier they cannot be:
   * ERR_MOUNT_POINT_READ_ONLY); a non-directory on the way is
   * ERR_MOUNT_POINT_NOT_DIRECTORY. When the promise resolves the mount is in place with
   * the requested mode in effect; when it rejects, nothing is left mounted by the call.
   */
  mount(request: MountRequest): Promise<void>;

  /**
   * Detaches the topmost mount at `path` inside `rootfs`. Resolves when nothing of ours
   * is mounted there any more, including when nothing was mounted or the path does not
   * exist: unmounting is idempotent.
   */
  unmount(target: MountTarget): Promise<void>;

  /**
   * What is mounted strictly below `dir` (normally a rootfs), parents first; mounts
   * stacked on one path appear once each, the topmost last.
   */
  list(dir: string): Promise<MountedVolume[]>;

  /**
   * Optional: makes several mounts at once, parents before children, with the
   * guarantees of `mount` for each. All or nothing: when the promise rejects, nothing
   * made by the call is left mounted, and the error names the path that failed.
   */
  mountAll?(requests: readonly MountRequest[]): Promise<void>;

  /**
   * Optional: detaches several mounts at once, children before parents, with the
   * guarantees of `unmount` for each. When it rejects, the error names the path that
   * failed; the others may have been detached.
   */
  unmountAll?(targets: readonly MountTarget[]): Promise<void>;

  /**
   * Optional: cleans up what a process using this mounter left half-done when it died,
   * outside any rootfs (BindMounter: binds waiting in its staging directory). `recover()`
   * calls it before it looks at the rootfs of any container.
   */
  recover?(): Promise<void>;

  /**
   * Optional: mounts volumes in the mount namespace of the running process `pid` (a
   * container that another runtime started), parents first, each at its path inside
   * that process's root, symlinks there followed but never out of it, `nosuid,nodev`
   * and read-only from its first instant when asked. A path where the topmost mount is
   * already that volume as asked (its mode, `nosuid,nodev`, idmapped when asked) is left
   * alone; a path where another mount is, or that volume otherwise, refuses the whole
   * call (ERR_MOUNT_POINT_IN_USE) before anything is made. All or nothing. Resolves to
   * the paths it mounted. `ContainerRuntime.attach` needs it (and `detachAll`).
   *
   * `namespace`, when given, is the mount namespace (`mnt:[<inode>]`) the caller found
   * `pid` in and recorded: if the process is in another one by the time it is opened
   * (it moved, or the pid was reused), nothing is made (ERR_PROCESS_CHANGED), so no
   * volume is ever mounted in a namespace nobody recorded.
   */
  attachAll?(pid: number, requests: readonly AttachRequest[], namespace?: string): Promise<string[]>;

  /**
   * Optional: lazily detaches, in the order given (children first), the topmost mount at
   * each path in the mount namespace of process `pid`, only where that mount is the
   * volume named (a mount of anything else is left). Idempotent. Resolves to the paths
   * it detached. `namespace` as for `attachAll`.
   */
  detachAll?(pid: number, targets: readonly AttachTarget[], namespace?: string): Promise<string[]>;
}

/** Public shapes. Fields may be added, never renamed. */

/** How a container has a volume: `'rw'` read-write, `'ro'` read-only (mounted read-only, writes fail with EROFS). */
export type Mode = 'rw' | 'ro';

/** Where a container's volume mount came from: made for it, or shared from another container. */
export type Origin =
  | 'created'
  | {
      /** The container the volume was shared from. */
      from: string;
    };

/** One entry of a container's configuration: which volume is mounted at which path. */
export interface VolumeMount {
  /** The container path the volume is mounted at (`/var/lib/postgres`). */
  path: string;
  /** The volume's id. */
  volumeId: string;
  /** Read-write or read-only, in this container. */
  mode: Mode;
  /** Made for this container, or shared from another (`{ from: containerId }`). */
  origin: Origin;
}

/**
 * One range of a user-namespace mapping, as the OCI runtime spec names it: the ids
 * `containerID … containerID + size - 1` inside the user namespace are the host ids
 * `hostID … hostID + size - 1`.
 */
export interface IdMapping {
  /** The first id of the range inside the user namespace. */
  containerID: number;
  /** The host id it is. */
  hostID: number;
  /** How many consecutive ids the range holds, 1 or more. */
  size: number;
}

/**
 * The user namespace a container's processes run in, as `/proc/<pid>/uid_map` and
 * `gid_map` say it. A container that has one gets its volumes mounted idmapped with it:
 * what a volume holds shows inside with the ids it has on disk (a file of uid 0 on disk
 * is root inside), and what the container writes lands on disk with its ids inside.
 * See docs/user-namespaces.md.
 */
export interface IdMap {
  /** The uid ranges: 1 to 340 of them, overlapping neither inside nor on the host. */
  uidMappings: IdMapping[];
  /** The gid ranges, with the same rules. */
  gidMappings: IdMapping[];
}

/** A container as `get`, `list`, `create` and `mount` report it: a copy, safe to change. */
export interface ContainerInfo {
  /** The container's id, a lower-case uuid (any unique prefix of it names the container). */
  id: string;
  /** The host directory holding the container's root filesystem. */
  rootfs: string;
  /** Its volumes, parents first. */
  volumes: VolumeMount[];
  /** True between a successful `mount` and the next `unmount`: the runtime means it to be mounted. */
  mounted: boolean;
  /** When the container was created, ISO 8601. */
  createdAt: string;
  /**
   * Set on a handler's transient container only: `pid` is the process running the
   * handler (this one or another). Its volumes are mounted only in the handler's own
   * namespace, never on the host; it cannot be mounted, nor removed while the handler
   * runs (ERR_HANDLER_RUNNING).
   */
  handler?: {
    /** The process running the handler. */
    pid: number;
  };
  /** The user namespace its processes run in, when it was created with one: its volumes are mounted idmapped. */
  idmap?: IdMap;
  /**
   * The running processes whose mount namespaces `attach` mounted its volumes in (one
   * per namespace, the process given to `attach`), until `detach` takes them all out or
   * `recover()` finds the namespace gone. While one of them holds its volumes, the
   * container cannot be removed (ERR_CONTAINER_ATTACHED).
   */
  attachedTo?: {
    /** The process given to `attach`. */
    pid: number;
  }[];
}

/** One container's use of a volume. */
export interface VolumeUse {
  /** The container using the volume. */
  containerId: string;
  /** Where, inside it. */
  path: string;
  /** How: read-write or read-only. */
  mode: Mode;
}

/** A volume as `volumes.list` and `volumes.inspect` report it. */
export interface VolumeInfo {
  /** The volume's id, a lower-case uuid (any unique prefix of it names the volume). */
  id: string;
  /** Its directory on the host, under the state root: the volume's data. */
  hostPath: string;
  /** When it was created, ISO 8601 (the birth time of its directory). */
  createdAt: string;
  /** Every container that references it, mounted or not; empty for an unused volume. */
  usedBy: VolumeUse[];
}

/** What `create` makes: `docker create -v PATH… --volumes-from ID[:ro|:rw]…`. */
export interface CreateContainerSpec {
  /** Host directory holding the container's root filesystem. Must exist. */
  rootfs: string;
  /** Container paths that each get a new volume (`-v /var/lib/postgres`). */
  volumes?: string[];
  /** Containers whose volumes are shared, in order: `'<id>'`, `'<id>:ro'` or `'<id>:rw'` (`--volumes-from`). */
  volumesFrom?: string[];
  /** Copy what the rootfs holds at a new volume's path into it (Docker's copy-up). Default true. */
  copyUp?: boolean;
  /**
   * The user namespace the container's processes will run in: every volume of the
   * container (its own and those it shares) is then mounted idmapped with it, so that
   * owners inside are the owners on disk. Fixed at creation. Needs a mounter that makes
   * idmapped mounts (`Mounter.supportsIdmap`: BindMounter with the kernel engine).
   */
  idmap?: IdMap;
}

/** Options of `createVolumes`. */
export interface CreateVolumesOptions {
  /** Copy what the rootfs holds at each new volume's path into it. Default true. */
  copyUp?: boolean;
}

/** Options of `shareVolumesFrom`. */
export interface ShareOptions {
  /** `'ro'` shares every volume read-only; `'rw'` or none keeps each volume's own mode (never makes a read-only one writable). */
  mode?: Mode;
}

/** Options of `remove`: `docker rm [-f] [-v]`. */
export interface RemoveContainerOptions {
  /** Unmount a mounted container first instead of refusing. */
  force?: boolean;
  /** Also delete the container's volumes that no other container references (`docker rm -v`). */
  volumes?: boolean;
}

/** Options of `attach`. */
export interface AttachOptions {
  /** A process of the running container (its init, as `runc state` gives it): its mount namespace gets the volumes. */
  pid: number;
}

/** Options of `detach`. */
export interface DetachOptions {
  /** A process of the running container, as given to `attach`. */
  pid: number;
  /** The container paths of the volumes to take out; default all of the container's volumes. */
  paths?: string[];
}

/** What `attach` did. */
export interface AttachResult {
  /** The container, as `get` reports it now. */
  container: ContainerInfo;
  /** The container paths mounted by this call, parents first. */
  attached: string[];
  /** The container paths where the volume was mounted already (by the runtime from `ociMounts`, or an earlier `attach`), left alone. */
  present: string[];
}

/** What `detach` did. */
export interface DetachResult {
  /** The container, as `get` reports it now. */
  container: ContainerInfo;
  /** The container paths whose volume was unmounted by this call, children first. */
  detached: string[];
}

/** Options of `volumes.prune`. */
export interface PruneOptions {
  /** Delete nothing: report what a prune would delete now. */
  dryRun?: boolean;
}

/** What `volumes.prune` did, or with `dryRun` would do. */
export interface PruneResult {
  /** The ids of the volumes deleted (with `dryRun`, that would be deleted), sorted. */
  removed: string[];
}

/** Options of `volumes.diskUsage`. */
export interface DiskUsageOptions {
  /** Stop walking after this many milliseconds and return what was counted, with `complete: false`. No limit by default. */
  timeout?: number;
  /** Stops the walk when aborted, like `timeout`: what was counted is returned with `complete: false`. */
  signal?: AbortSignal;
  /** Called now and then during the walk with the figures so far (for a progress display). */
  onProgress?: (usage: DiskUsage) => void;
}

/** What a volume takes on disk, like `du`; a file with several hard links is counted once. */
export interface DiskUsage {
  /** Sum of the sizes of files, directories and symlinks (`du --apparent-size --bytes`). */
  apparentBytes: number;
  /** Space allocated on disk, in bytes (`du --block-size=1`): less than apparent for sparse files. */
  allocatedBytes: number;
  /** Everything that is not a directory: regular files, symlinks, devices, FIFOs, sockets. */
  files: number;
  /** Directories, the volume's own included. */
  directories: number;
  /** False when `timeout` ran out or `signal` was aborted before the walk ended: the figures are then a lower bound. */
  complete: boolean;
}

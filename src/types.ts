/** Public shapes. Fields may be added, never renamed. */

export type Mode = 'rw' | 'ro';

/** Where a container's volume mount came from: made for it, or shared from another container. */
export type Origin = 'created' | { from: string };

/** One entry of a container's configuration: which volume is mounted at which path. */
export interface VolumeMount {
  path: string;
  volumeId: string;
  mode: Mode;
  origin: Origin;
}

export interface ContainerInfo {
  id: string;
  rootfs: string;
  volumes: VolumeMount[];
  /** True between a successful `mount` and the next `unmount`: the runtime means it to be mounted. */
  mounted: boolean;
  createdAt: string;
  /**
   * Set on a handler's transient container only: `pid` is the process running the
   * handler (this one or another). Its volumes are mounted only in the handler's own
   * namespace, never on the host; it cannot be mounted, nor removed while the handler
   * runs (ERR_HANDLER_RUNNING).
   */
  handler?: { pid: number };
}

export interface VolumeUse {
  containerId: string;
  path: string;
  mode: Mode;
}

export interface VolumeInfo {
  id: string;
  hostPath: string;
  createdAt: string;
  usedBy: VolumeUse[];
}

export interface CreateContainerSpec {
  /** Host directory holding the container's root filesystem. Must exist. */
  rootfs: string;
  /** Container paths that each get a new volume (`-v /var/lib/postgres`). */
  volumes?: string[];
  /** Containers whose volumes are shared, in order: `'<id>'`, `'<id>:ro'` or `'<id>:rw'` (`--volumes-from`). */
  volumesFrom?: string[];
  /** Copy what the rootfs holds at a new volume's path into it (Docker's copy-up). Default true. */
  copyUp?: boolean;
}

export interface CreateVolumesOptions {
  copyUp?: boolean;
}

export interface ShareOptions {
  mode?: Mode;
}

export interface RemoveContainerOptions {
  /** Unmount a mounted container first instead of refusing. */
  force?: boolean;
  /** Also delete the container's volumes that no other container references (`docker rm -v`). */
  volumes?: boolean;
}

export interface PruneOptions {
  /** Delete nothing: report what a prune would delete now. */
  dryRun?: boolean;
}

export interface PruneResult {
  /** The ids of the volumes deleted (with `dryRun`, that would be deleted), sorted. */
  removed: string[];
}

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

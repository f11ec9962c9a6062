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

export interface PruneResult {
  removed: string[];
}

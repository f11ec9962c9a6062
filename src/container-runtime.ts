import type { Readable, Writable } from 'node:stream';
import { type Context, type ContainerVolumesOptions } from './context.js';
import { optionalBoolean, optionsObject } from './rules/options.js';
import { createContainer, removeContainer } from './operations/containers.js';
import { ContainerVolumesError, describe } from './errors.js';
import { resolveContainer } from './operations/references.js';
import { normalizeVolumePaths } from './rules/volume-path.js';
import { checkIdMap } from './rules/idmap.js';
import { parseVolumesFrom, type VolumesFromSpec } from './rules/volumes-from.js';
import { lxcMountEntries } from './export/lxc.js';
import { makeMountPoints } from './export/mount-points.js';
import { ociMounts, type OciMount } from './export/oci.js';
import { placeMounts } from './plan/mount-plan.js';
import { recoverStore, type RecoveryReport } from './operations/recover.js';
import { backup, type BackupResult } from './handlers/backup.js';
import { restore } from './handlers/restore.js';
import { sync, type SyncOptions, type SyncResult } from './handlers/sync.js';
import type { BackupOptions, RestoreOptions } from './handlers/transfer-options.js';
import {
  type CommandHandler,
  type CommandResult,
  type HandlerFunction,
  type HandlerOptions,
  runHandler,
} from './handlers/run-handler.js';
import { toContainerInfo } from './store/container-config.js';
import { attachContainer, detachContainer } from './operations/attach.js';
import { checkPid } from './mounter/mount-target.js';
import type {
  AttachOptions,
  AttachResult,
  ContainerInfo,
  CreateContainerSpec,
  DetachOptions,
  DetachResult,
  CreateVolumesOptions,
  RemoveContainerOptions,
  ShareOptions,
  VolumeMount,
} from './types.js';
import { contextOf, VolumeManager } from './volume-manager.js';

/**
 * Containers with Docker-style data volumes: `create` makes a container's volumes
 * (`-v`) and shares others' (`--volumes-from`), `mount` bind-mounts them into its
 * rootfs. `volumes` manages the volumes themselves.
 */
export class ContainerRuntime {
  /** The volumes of this runtime's containers, and the volumes themselves (list, inspect, remove, prune, diskUsage). */
  readonly volumes: VolumeManager;
  readonly #ctx: Context;

  /** Opens nothing yet: the state root is created, if missing, on first use. A relative `root` is refused (ERR_INVALID_ARGUMENT). */
  constructor(options: ContainerVolumesOptions) {
    this.volumes = new VolumeManager(options);
    this.#ctx = contextOf(this.volumes);
  }

  /** `docker create -v PATH… --volumes-from ID[:ro|:rw]…`: a new container with its volumes. */
  async create(spec: CreateContainerSpec): Promise<ContainerInfo> {
    if (spec === undefined) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'create needs a container spec with a rootfs');
    const given = optionsObject<CreateContainerSpec>(spec, 'the container spec', ['rootfs', 'volumes', 'volumesFrom', 'copyUp', 'idmap']);
    const paths = given.volumes === undefined ? [] : normalizeVolumePaths(given.volumes);
    const idmap = given.idmap === undefined ? undefined : checkIdMap(given.idmap, 'idmap');
    if (given.volumesFrom !== undefined && !Array.isArray(given.volumesFrom)) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `volumesFrom must be an array, got ${describe(given.volumesFrom)}`);
    }
    // In order, each entry wholly checked before the next: the first bad entry is the one reported.
    const volumesFrom: VolumesFromSpec[] = [];
    for (const entry of given.volumesFrom ?? []) {
      const parsed = parseVolumesFrom(entry);
      volumesFrom.push({ ...parsed, containerId: await resolveContainer(this.#ctx, parsed.containerId) });
    }
    const copyUp = optionalBoolean(given.copyUp, 'copyUp') ?? true;
    const config = await this.#ctx.store.exclusive(() =>
      createContainer(this.#ctx, { rootfs: given.rootfs, paths, volumesFrom, copyUp, ...(idmap ? { idmap } : {}) }),
    );
    return toContainerInfo(config);
  }

  /** The container named by `containerId` or any unique prefix of it (`docker inspect`). */
  async get(containerId: string): Promise<ContainerInfo> {
    containerId = await resolveContainer(this.#ctx, containerId);
    return toContainerInfo(await this.#ctx.store.readContainer(containerId));
  }

  /** Every container, oldest first. */
  async list(): Promise<ContainerInfo[]> {
    return (await this.#ctx.store.readAllContainers()).map(toContainerInfo);
  }

  /** Same as `volumes.mount`: bind-mounts the container's volumes into its rootfs. */
  mount(containerId: string): Promise<ContainerInfo> {
    return this.volumes.mount(containerId);
  }

  /** Same as `volumes.unmount`. */
  unmount(containerId: string): Promise<ContainerInfo> {
    return this.volumes.unmount(containerId);
  }

  /**
   * Adds volumes to a running container: brings the mount namespace of the running
   * process `pid` (a container a runtime such as runc started from `ociMounts`) in line
   * with the container's configuration. Every volume missing there is mounted at its
   * container path, resolved inside that process's root (its symlinks followed, never
   * out of it; never under its /proc or /sys), `nosuid,nodev`, read-only from its first
   * instant when its mode is `ro`, parents first; volumes already there as asked are left
   * alone (otherwise ERR_MOUNT_POINT_IN_USE: detach that path first).
   * All or nothing. While attached, the container cannot be removed and its volumes
   * cannot be deleted. Needs a BindMounter on the kernel engine and util-linux's
   * nsenter, mount and umount. See docs/running-containers.md.
   */
  async attach(containerId: string, options: AttachOptions): Promise<AttachResult> {
    containerId = await resolveContainer(this.#ctx, containerId);
    if (options === undefined) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'attach needs options with the pid of a process of the running container');
    const { pid } = optionsObject<AttachOptions>(options, 'options', ['pid']);
    checkPid(pid, 'options.pid');
    const done = await this.#ctx.store.exclusive(() => attachContainer(this.#ctx, containerId, pid));
    return { container: toContainerInfo(done.config), attached: done.attached, present: done.present };
  }

  /**
   * Takes volumes out of a running container again: lazily unmounts, children first, the
   * mount at each of the container's volume paths (or only `paths`) in the mount
   * namespace of process `pid`, where that mount is the volume itself (anything else
   * mounted there is left). Idempotent. Once all are out, the attachment is forgotten;
   * a volume the container moved away from its path (by renaming a parent) is left, and
   * keeps the attachment, until the path leads to it again or the process ends.
   */
  async detach(containerId: string, options: DetachOptions): Promise<DetachResult> {
    containerId = await resolveContainer(this.#ctx, containerId);
    if (options === undefined) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'detach needs options with the pid of a process of the running container');
    const given = optionsObject<DetachOptions>(options, 'options', ['pid', 'paths']);
    checkPid(given.pid, 'options.pid');
    const { pid } = given;
    const paths = given.paths === undefined ? undefined : normalizeVolumePaths(given.paths);
    const done = await this.#ctx.store.exclusive(() => detachContainer(this.#ctx, containerId, pid, paths));
    return { container: toContainerInfo(done.config), detached: done.detached };
  }

  /**
   * Deletes the container's configuration. A mounted container is refused unless
   * `force` (which unmounts it first); `volumes` also deletes its volumes that no
   * other container references (`docker rm -v`). A running handler's transient
   * container is refused (ERR_HANDLER_RUNNING); `force` kills a command handler first.
   */
  async remove(containerId: string, options?: RemoveContainerOptions): Promise<void> {
    containerId = await resolveContainer(this.#ctx, containerId);
    const given = optionsObject<RemoveContainerOptions>(options, 'options', ['force', 'volumes']);
    const force = optionalBoolean(given.force, 'options.force') ?? false;
    const volumes = optionalBoolean(given.volumes, 'options.volumes') ?? false;
    await this.#ctx.store.exclusive(() => removeContainer(this.#ctx, containerId, force, volumes));
  }

  /**
   * Runs a custom volume handler against the volumes of `containerId` (a backup, a transfer, a sync): a
   * transient handler container shares them (so they cannot be removed or pruned) for
   * as long as the handler runs, and is removed afterwards whatever happens.
   *
   * With a function, calls it with each volume's host path and resolves to what it
   * returns. With `{ command, rootfs }`, runs the command chrooted into `rootfs` in a
   * private mount namespace where the volumes are mounted at their container paths;
   * nothing of it stays mounted when it exits. See docs/handlers.md.
   */
  runHandler<T>(containerId: string, handler: HandlerFunction<T>, options?: HandlerOptions): Promise<T>;
  runHandler(containerId: string, handler: CommandHandler): Promise<CommandResult>;
  async runHandler(containerId: string, handler: unknown, options?: unknown): Promise<unknown> {
    return runHandler(this.#ctx, await resolveContainer(this.#ctx, containerId), handler, options);
  }

  /**
   * A ready-made handler: writes one tar archive holding every volume of the container
   * under its container path, after a manifest (paths, modes, volume ids, creation
   * time), to the file `destination` or into a stream (ended when the archive is
   * complete, destroyed if the backup fails). Resolves to the manifest and tar's
   * `warnings` (files that changed while read, sockets skipped). The volumes are shared
   * read-only while it runs.
   */
  async backup(containerId: string, destination: string | Writable, options?: BackupOptions): Promise<BackupResult> {
    return backup(this.#ctx, await resolveContainer(this.#ctx, containerId), destination, options);
  }

  /**
   * Creates a new container with `options.rootfs` whose volumes hold exactly the data
   * of a `backup` archive (a file or a stream) or of a `sync` destination directory:
   * contents, owners, modes, links, extended attributes, ACLs, sparse files. If
   * anything fails, a stream cut short included, no container and no volume is left.
   */
  async restore(source: string | Readable, options: RestoreOptions): Promise<ContainerInfo> {
    return toContainerInfo(await restore(this.#ctx, source, options));
  }

  /**
   * A ready-made handler: mirrors every volume of the container into
   * `destination/<container path>/…` plus the manifest with rsync (archive mode, hard
   * links, ACLs, extended attributes, sparse files, numeric ids, `--delete`), to a local
   * directory or `[user@]host:/path` over ssh (`options.ssh`: ssh's arguments). Run again,
   * it transfers only what changed. `restore` takes the destination directory as it takes
   * an archive. The volumes are shared read-only while it runs.
   */
  async sync(containerId: string, destination: string, options?: SyncOptions): Promise<SyncResult> {
    return sync(this.#ctx, await resolveContainer(this.#ctx, containerId), destination, options);
  }

  /**
   * Brings the store and the host's mounts in line with the configurations after a
   * crash or reboot: stray mounts are detached, missing ones of containers meant to be
   * mounted are made, half-created volumes and leftover files are deleted, handler
   * containers of dead processes are removed, and after a reboot every container is
   * marked unmounted. Idempotent; reports what it did.
   */
  async recover(): Promise<RecoveryReport> {
    return this.#ctx.store.exclusive(() => recoverStore(this.#ctx));
  }

  /**
   * The container's volumes as OCI runtime-spec `mounts` entries, parents first, for a
   * runtime such as runc to apply itself (do not also `mount` the container).
   */
  async ociMounts(containerId: string): Promise<OciMount[]> {
    containerId = await resolveContainer(this.#ctx, containerId);
    return ociMounts(await this.#ctx.store.readContainer(containerId), (id) => this.#ctx.store.volumeDir(id));
  }

  /**
   * The container's volumes as `lxc.mount.entry = …` lines for an LXC configuration,
   * parents first, each at the place the path lands in the rootfs now. Makes the mount
   * points first, as `mount` would (nested ones inside their parent volume), so LXC
   * need create none: call it right before starting the container, and let LXC mount
   * (do not also `mount` the container).
   */
  async lxcMountEntries(containerId: string): Promise<string[]> {
    containerId = await resolveContainer(this.#ctx, containerId);
    return this.#ctx.store.exclusive(async () => {
      const placed = placeMounts(await this.#ctx.store.readContainer(containerId), (id) => this.#ctx.store.volumeDir(id));
      const entries = lxcMountEntries(placed, `container ${containerId}`);
      makeMountPoints(placed);
      return entries;
    });
  }

  /** Same as `volumes.createVolumes`. */
  createVolumes(containerId: string, paths: string[], options?: CreateVolumesOptions): Promise<VolumeMount[]> {
    return this.volumes.createVolumes(containerId, paths, options);
  }

  /** Same as `volumes.shareVolumesFrom`. */
  shareVolumesFrom(containerId: string, sourceId: string, options?: ShareOptions): Promise<VolumeMount[]> {
    return this.volumes.shareVolumesFrom(containerId, sourceId, options);
  }
}

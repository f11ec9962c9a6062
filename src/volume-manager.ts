import { ContainerVolumesError, describe, isErrnoException } from './errors.js';
import { measureTree } from './operations/disk-usage.js';
import { type Context, type ContainerVolumesOptions, createContext } from './context.js';
import { optionalBoolean, optionsObject } from './rules/options.js';
import { mountContainer, readSources, sortVolumes, unmountContainer } from './operations/containers.js';
import { checkPlaces } from './plan/mount-plan.js';
import { checkReadOnlyParents } from './plan/read-only-parents.js';
import { checkMode, sharedMounts } from './rules/volumes-from.js';
import { resolveContainer, resolveVolume } from './operations/references.js';
import { normalizeVolumePaths } from './rules/volume-path.js';
import { type ContainerConfig, toContainerInfo } from './store/container-config.js';
import type {
  ContainerInfo,
  CreateVolumesOptions,
  DiskUsage,
  DiskUsageOptions,
  PruneOptions,
  PruneResult,
  ShareOptions,
  VolumeInfo,
  VolumeMount,
} from './types.js';
import { allMounts, checkNotMounted, discardVolumes, makeVolumes, volumeReferences, volumeUsers } from './operations/volumes.js';
import type { MountedVolume } from './mounter/mounter.js';
import { checkNotMountedElsewhere } from './namespaces/mounted-elsewhere.js';
import { debugStore } from './debug.js';

/** The context of each manager, for the ContainerRuntime that owns it: one store, one queue. */
const contexts = new WeakMap<VolumeManager, Context>();

export function contextOf(manager: VolumeManager): Context {
  return contexts.get(manager) as Context;
}

/**
 * The volumes of existing containers: add them, share them, mount them, and manage
 * the volumes themselves (list, inspect, remove, prune).
 */
export class VolumeManager {
  readonly #ctx: Context;

  /** Usually reached as `runtime.volumes`; standalone, it works on the store at `options.root` like a runtime would. */
  constructor(options: ContainerVolumesOptions) {
    this.#ctx = createContext(options);
    contexts.set(this, this.#ctx);
  }

  /** The state directory, resolved. */
  get root(): string {
    return this.#ctx.store.root;
  }

  /** Adds one new volume per path to a container (`-v`); copy-up as in `create`. Resolves to the mounts added. */
  async createVolumes(containerId: string, paths: string[], options?: CreateVolumesOptions): Promise<VolumeMount[]> {
    containerId = await resolveContainer(this.#ctx, containerId);
    const clean = normalizeVolumePaths(paths);
    const copyUp = optionalBoolean(optionsObject<CreateVolumesOptions>(options, 'options', ['copyUp']).copyUp, 'options.copyUp') ?? true;
    const ctx = this.#ctx;
    return ctx.store.exclusive(async () => {
      const config = await this.#changeable(containerId);
      const taken = clean.find((path) => config.volumes.some((v) => v.path === path));
      if (taken) throw duplicate(containerId, taken);
      checkPlaces(config.rootfs, [...config.volumes.map((v) => v.path), ...clean]);
      const created = await makeVolumes(ctx, containerId, config.rootfs, clean, copyUp);
      const changed = { ...config, volumes: sortVolumes([...config.volumes, ...created]) };
      try {
        checkReadOnlyParents(containerId, changed.volumes, (id) => ctx.store.volumeDir(id), config.rootfs);
        await ctx.store.writeContainer(changed, config);
      } catch (error) {
        await discardVolumes(ctx, containerId, created);
        throw error;
      }
      if (created.length > 0) await ctx.store.clearPending(containerId);
      return created.map((v) => ({ ...v }));
    });
  }

  /**
   * Shares every volume of `sourceId` with `containerId` at the same paths
   * (`--volumes-from`). Strict: a path the container already has is
   * ERR_DUPLICATE_MOUNT_POINT. Resolves to the mounts added.
   */
  async shareVolumesFrom(containerId: string, sourceId: string, options?: ShareOptions): Promise<VolumeMount[]> {
    containerId = await resolveContainer(this.#ctx, containerId);
    sourceId = await resolveContainer(this.#ctx, sourceId);
    const mode = checkMode(optionsObject<ShareOptions>(options, 'options', ['mode']).mode, `sharing from ${sourceId}`);
    if (containerId === sourceId) {
      throw new ContainerVolumesError('ERR_SHARE_FROM_SELF', `container ${containerId} cannot share volumes from itself`);
    }
    const ctx = this.#ctx;
    return ctx.store.exclusive(async () => {
      const config = await this.#changeable(containerId);
      const added = sharedMounts(await readSources(ctx, [{ containerId: sourceId, mode }]));
      const taken = added.find((s) => config.volumes.some((v) => v.path === s.path));
      if (taken) throw duplicate(containerId, taken.path);
      checkPlaces(config.rootfs, [...config.volumes, ...added].map((v) => v.path));
      const changed = { ...config, volumes: sortVolumes([...config.volumes, ...added]) };
      checkReadOnlyParents(containerId, changed.volumes, (id) => ctx.store.volumeDir(id), config.rootfs);
      await ctx.store.writeContainer(changed, config);
      return added;
    });
  }

  /**
   * Bind-mounts every volume of the container into its rootfs, parents first, and
   * records that it is meant to be mounted. Idempotent: what is already in place is
   * left alone. All or nothing: if one mount fails, those made by the call are undone.
   */
  async mount(containerId: string): Promise<ContainerInfo> {
    containerId = await resolveContainer(this.#ctx, containerId);
    const ctx = this.#ctx;
    return toContainerInfo(await ctx.store.exclusive(() => mountContainer(ctx, containerId)));
  }

  /** Undoes `mount`, children first. Idempotent; if one unmount fails, the others are mounted again. */
  async unmount(containerId: string): Promise<ContainerInfo> {
    containerId = await resolveContainer(this.#ctx, containerId);
    const ctx = this.#ctx;
    return toContainerInfo(await ctx.store.exclusive(async () => unmountContainer(ctx, await ctx.store.readContainer(containerId))));
  }

  /** Every volume in the store, referenced or not, oldest first. */
  async list(): Promise<VolumeInfo[]> {
    const ctx = this.#ctx;
    const [ids, references] = await Promise.all([ctx.store.listVolumeIds(), volumeReferences(ctx)]);
    // A volume deleted by another process between the listing and the stat is simply gone.
    const infos = (await Promise.all(ids.map((id) => this.#info(id, references).catch(ifGone(undefined))))).filter(
      (info): info is VolumeInfo => info !== undefined,
    );
    return infos.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  /** A volume's host path, creation time, and which containers use it at which path. */
  async inspect(volumeId: string): Promise<VolumeInfo> {
    volumeId = await resolveVolume(this.#ctx, volumeId);
    await this.#existing(volumeId);
    return this.#info(volumeId, new Map([[volumeId, await volumeUsers(this.#ctx, volumeId)]]));
  }

  /** Deletes a volume and its data; refused while any container references it, mounted or not. */
  async remove(volumeId: string): Promise<void> {
    volumeId = await resolveVolume(this.#ctx, volumeId);
    const ctx = this.#ctx;
    await ctx.store.exclusive(async () => {
      await this.#existing(volumeId);
      const users = await volumeUsers(ctx, volumeId, true);
      if (users.length > 0) {
        throw new ContainerVolumesError(
          'ERR_VOLUME_IN_USE',
          `volume ${volumeId} is in use by container${users.length > 1 ? 's' : ''} ${users.map((u) => `${u.containerId} (at ${u.path})`).join(', ')}`,
        );
      }
      checkNotMounted(ctx, await allMounts(ctx), volumeId);
      await checkNotMountedElsewhere(ctx, volumeId);
      await ctx.store.deleteVolumeDir(volumeId);
    });
  }

  /**
   * Deletes every volume no container references; one that is mounted anywhere, or has
   * something mounted inside, is kept. With `dryRun`, deletes nothing and changes nothing
   * in the store: `removed` lists the volumes a prune would delete now, after the same checks.
   */
  async prune(options?: PruneOptions): Promise<PruneResult> {
    const dryRun = optionalBoolean(optionsObject<PruneOptions>(options, 'options', ['dryRun']).dryRun, 'options.dryRun') ?? false;
    const ctx = this.#ctx;
    return ctx.store.exclusive(async () => {
      const removed: string[] = [];
      // Only volumes whose last user went away can be unused, or volumes of a create
      // that a killed process left pending (under the lock, no create is under way).
      const pending = await ctx.store.readPending();
      const candidates = new Set([...ctx.store.index.unused(), ...pending.flatMap((record) => record.volumeIds)]);
      let mounts: Promise<MountedVolume[]> | undefined;
      for (const id of candidates) {
        if (!(await ctx.store.volumeExists(id)) || (await volumeUsers(ctx, id, true)).length > 0) {
          if (!dryRun) ctx.store.index.forget(id, { refs: false });
          continue;
        }
        try {
          checkNotMounted(ctx, await (mounts ??= allMounts(ctx)), id);
          await checkNotMountedElsewhere(ctx, id);
        } catch (error) {
          debugStore('prune keeps %s: %s', id, (error as Error).message);
          continue;
        }
        if (!dryRun) await ctx.store.deleteVolumeDir(id);
        removed.push(id);
      }
      if (!dryRun) for (const { containerId } of pending) await ctx.store.clearPending(containerId);
      return { removed: removed.sort() };
    });
  }

  /**
   * How much space a volume takes, like `du`: apparent and allocated bytes, files and
   * directories, a file with several hard links counted once. Walks the volume's own
   * file system only (like `du -x`) and never follows a symlink. `timeout` (ms) bounds
   * the walk on a very large volume, and `signal` stops it: either way the figures
   * counted so far are returned with `complete: false` (a lower bound), not an error.
   */
  async diskUsage(volumeId: string, options?: DiskUsageOptions): Promise<DiskUsage> {
    volumeId = await resolveVolume(this.#ctx, volumeId);
    const given = optionsObject<DiskUsageOptions>(options, 'options', ['timeout', 'signal', 'onProgress']);
    const { timeout, signal, onProgress } = given;
    if (timeout !== undefined && !(Number.isSafeInteger(timeout) && timeout > 0)) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.timeout must be a whole number of milliseconds above 0, got ${describe(timeout)}`);
    }
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.signal must be an AbortSignal, got ${describe(signal)}`);
    }
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.onProgress must be a function, got ${describe(onProgress)}`);
    }
    await this.#existing(volumeId);
    return measureTree(this.#ctx.store.volumeDir(volumeId), { timeout, signal, onProgress }).catch(ifGone(undefined)).then((usage) => {
      if (usage === undefined) throw new ContainerVolumesError('ERR_VOLUME_NOT_FOUND', `no such volume: ${volumeId} (deleted while measured)`);
      return usage;
    });
  }

  async #changeable(containerId: string): Promise<ContainerConfig> {
    const config = await this.#ctx.store.readContainer(containerId);
    if (config.mounted) {
      throw new ContainerVolumesError(
        'ERR_CONTAINER_MOUNTED',
        `container ${containerId} is mounted: unmount it before changing its volumes`,
      );
    }
    return config;
  }

  async #existing(volumeId: string): Promise<void> {
    if (!(await this.#ctx.store.volumeExists(volumeId))) {
      throw new ContainerVolumesError('ERR_VOLUME_NOT_FOUND', `no such volume: ${volumeId}`);
    }
  }

  async #info(id: string, references: Map<string, VolumeInfo['usedBy']>): Promise<VolumeInfo> {
    return {
      id,
      hostPath: this.#ctx.store.volumeDir(id),
      createdAt: await this.#ctx.store.volumeCreatedAt(id),
      usedBy: (references.get(id) ?? []).map((u) => ({ ...u })),
    };
  }
}

function ifGone<T>(value: T) {
  return (error: unknown): T => {
    if (isErrnoException(error, 'ENOENT')) return value;
    throw error;
  };
}

function duplicate(containerId: string, path: string): ContainerVolumesError {
  return new ContainerVolumesError('ERR_DUPLICATE_MOUNT_POINT', `container ${containerId} already has a volume at ${path}`);
}

import path from 'node:path';
import { ContainerVolumesError } from '../errors.js';
import type { Context } from '../context.js';
import { debugRuntime } from '../debug.js';
import { applyPlan, checkIdmapSupport, checkPlaces, mountedOf, placeMounts, removePlan } from '../plan/mount-plan.js';
import { checkMountPointsFree, holderOf } from '../plan/mount-owners.js';
import { checkReadOnlyParents } from '../plan/read-only-parents.js';
import { checkRootfs } from '../rootfs/check-rootfs.js';
import { sharedMounts, type ShareSource } from '../rules/volumes-from.js';
import { newId } from '../rules/ids.js';
import { compareParentsFirst } from '../rules/volume-path.js';
import type { VolumesFromSpec } from '../rules/volumes-from.js';
import type { ContainerConfig } from '../store/container-config.js';
import { allMounts, checkNotMounted, discardVolumes, makeVolumes, volumeUsers } from './volumes.js';
import { currentBootId } from '../store/boot-id.js';
import { currentMountNamespace } from '../namespaces/mount-namespace.js';
import { checkNotMountedElsewhere, mountedElsewhere, whereMounted } from '../namespaces/mounted-elsewhere.js';
import { recordNamespace } from '../store/namespace-registry.js';
import { checkHandlerEnded, handlerRunning } from '../handlers/handler-state.js';
import type { IdMap, VolumeMount } from '../types.js';
import type { MountedVolume } from '../mounter/mounter.js';
import { checkNotAttached } from './attach.js';

/* The operations on containers. Each runs inside the store's lock, taken by its caller. */

export interface CreateRequest {
  rootfs: unknown;
  paths: string[];
  volumesFrom: VolumesFromSpec[];
  copyUp: boolean;
  /** The user namespace the container runs in, checked (see `checkIdMap`): its own, never a share source's. */
  idmap?: IdMap;
  /** Marks a handler's transient container (see runHandler). */
  handler?: Pick<ContainerConfig, 'handler'>;
}

export function sortVolumes(volumes: VolumeMount[]): VolumeMount[] {
  return volumes.sort((a, b) => compareParentsFirst(a.path, b.path));
}

export async function readSources(ctx: Context, specs: readonly VolumesFromSpec[]): Promise<ShareSource[]> {
  return Promise.all(specs.map(async ({ containerId, mode }) => ({ config: await ctx.store.readContainer(containerId), mode })));
}

export async function createContainer(ctx: Context, request: CreateRequest): Promise<ContainerConfig> {
  const rootfs = checkRootfs(request.rootfs, ctx.store.root);
  const shared = sharedMounts(await readSources(ctx, request.volumesFrom));
  // A path a shared volume already covers gets no new volume: the shared data stays visible (Docker).
  const anonymous = request.paths.filter((path) => !shared.some((s) => s.path === path));
  checkPlaces(rootfs, [...shared.map((s) => s.path), ...anonymous]);
  const id = newId();
  const created = await makeVolumes(ctx, id, rootfs, anonymous, request.copyUp);
  const config: ContainerConfig = {
    version: 1,
    id,
    rootfs,
    createdAt: new Date().toISOString(),
    mounted: false,
    volumes: sortVolumes([...shared, ...created]),
    ...(request.idmap ? { idmap: request.idmap } : {}),
    ...request.handler,
  };
  try {
    checkReadOnlyParents(id, config.volumes, (volumeId) => ctx.store.volumeDir(volumeId), rootfs);
    await ctx.store.writeContainer(config);
  } catch (error) {
    await discardVolumes(ctx, id, created);
    throw error;
  }
  if (created.length > 0) await ctx.store.clearPending(id);
  debugRuntime('created container %s with %d volumes', config.id, config.volumes.length);
  return config;
}

export async function checkVolumesExist(ctx: Context, config: ContainerConfig): Promise<void> {
  for (const { volumeId, path } of config.volumes) {
    if (!(await ctx.store.volumeExists(volumeId))) {
      throw new ContainerVolumesError(
        'ERR_VOLUME_NOT_FOUND',
        `volume ${volumeId} of container ${config.id} at ${path} is missing from the store`,
      );
    }
  }
}

export async function mountContainer(ctx: Context, containerId: string): Promise<ContainerConfig> {
  const config = await ctx.store.readContainer(containerId);
  if (config.handler && handlerRunning(config.handler)) {
    // Mounted on the host too, its mounts would be indistinguishable from the target's
    // when the rootfs is the same, and unmounting one would take the other's.
    throw new ContainerVolumesError(
      'ERR_HANDLER_RUNNING',
      `container ${containerId} is the transient container of a handler that runs in process ${config.handler.pid}: its volumes are mounted only in the handler's own namespace`,
    );
  }
  const where = await whereMounted(ctx, config);
  if (typeof where === 'object') throw mountedElsewhere(config, where, 'mount');
  await checkVolumesExist(ctx, config);
  const plan = placeMounts(config, (id) => ctx.store.volumeDir(id));
  checkIdmapSupport(ctx.mounter, plan, `container ${config.id}`);
  const guard = () => ctx.store.assertLocked();
  // Everything that can refuse does so before the intent is written, so a refusal changes nothing.
  const present = plan.length > 0 ? await ctx.mounter.list(config.rootfs) : [];
  checkReadOnlyParents(config.id, config.volumes, (id) => ctx.store.volumeDir(id), config.rootfs);
  await checkMountPointsFree(ctx, config, plan, present, where === 'here');
  const boot = currentBootId();
  const here = currentMountNamespace();
  if (where === 'here' && config.mountedInBoot === boot && config.mountedIn?.namespace === here.namespace) {
    await applyPlan(ctx.mounter, plan, guard, present);
    return config;
  }
  // Intent is recorded before the first mount (as containerd does): a process killed
  // half-way leaves a container that says it is mounted, so `remove` still refuses it
  // without force and `mount`/`unmount` finish the job, instead of mounts nobody knows of.
  // It names this boot and this namespace, also when the container was already marked
  // mounted in an earlier boot or in a namespace that is gone: such a record would make
  // recover() take the live mounts for leftovers.
  ctx.store.assertLocked();
  recordNamespace(ctx.store.root, here, boot);
  const mounted: ContainerConfig = { ...config, mounted: true, mountedInBoot: boot, mountedIn: here };
  await ctx.store.writeContainer(mounted, config);
  try {
    await applyPlan(ctx.mounter, plan, guard, present);
  } catch (error) {
    // Back to what it was only if the rollback really left nothing mounted: otherwise the
    // intent stays, so `remove` keeps refusing and `unmount` can finish the job.
    const left = await mountedOf(ctx.mounter, plan).catch(() => plan);
    if (left.length === 0) {
      await ctx.store.writeContainer(config, mounted).catch((e: Error) => debugRuntime('restoring %s as it was failed: %s', config.id, e.message));
    }
    throw error;
  }
  return mounted;
}

export async function unmountContainer(ctx: Context, config: ContainerConfig): Promise<ContainerConfig> {
  const where = await whereMounted(ctx, config);
  if (typeof where === 'object') throw mountedElsewhere(config, where, 'unmount');
  // Not mounted here (never, or in a boot or a namespace that is gone): nothing of it is
  // mounted here, and a mount of its volumes at its paths is another container's — one
  // on the same rootfs sharing them, or a handler's target when the handler used the
  // target's rootfs. Only the record is brought in line.
  if (where === 'nowhere') return config.mounted ? markUnmounted(ctx, config) : config;
  await removePlan(
    ctx.mounter,
    placeMounts(config, (id) => ctx.store.volumeDir(id)),
    () => ctx.store.assertLocked(),
    async (mount) => (await holderOf(ctx, config.rootfs, mount, config.id)) !== undefined,
  );
  return markUnmounted(ctx, config);
}

async function markUnmounted(ctx: Context, config: ContainerConfig): Promise<ContainerConfig> {
  const { mountedInBoot: _, mountedIn: __, ...unmounted } = { ...config, mounted: false };
  await ctx.store.writeContainer(unmounted, config);
  return unmounted;
}

/**
 * The container's own mounts among every mount of the namespace, which a forced remove
 * detaches: those at its planned host paths, and their copies in the peers and slaves
 * of a shared rootfs (same propagation group), which go with them.
 */
function ownMounts(config: ContainerConfig, mounts: readonly MountedVolume[], volumeDir: (id: string) => string): Set<MountedVolume> {
  const at = new Set(placeMounts(config, volumeDir).map((r) => path.join(r.rootfs, r.path)));
  const own = mounts.filter((m) => at.has(m.path));
  const groups = new Set(own.flatMap((m) => (m.propagation ?? []).filter((t) => t.startsWith('shared:')).map((t) => t.slice('shared:'.length))));
  const copies = mounts.filter((m) => (m.propagation ?? []).some((t) => groups.has(t.slice(t.indexOf(':') + 1))));
  return new Set([...own, ...copies]);
}

export async function removeContainer(ctx: Context, containerId: string, force: boolean, withVolumes: boolean): Promise<void> {
  const config = await ctx.store.readContainer(containerId);
  if (config.mounted && !force) {
    throw new ContainerVolumesError('ERR_CONTAINER_MOUNTED', `container ${containerId} is mounted: unmount it first or pass { force: true }`);
  }
  const where = await whereMounted(ctx, config);
  if (typeof where === 'object') throw mountedElsewhere(config, where, 'remove');
  // Even with force: the process is not ours to stop, and detaching it is one call.
  await checkNotAttached(ctx, config);
  let orphans: string[] = [];
  if (withVolumes) {
    // Decide and check everything before changing anything, so a refusal loses nothing.
    for (const { volumeId } of config.volumes) {
      const users = await volumeUsers(ctx, volumeId, true);
      if (users.every((use) => use.containerId === containerId)) orphans.push(volumeId);
    }
    if (orphans.length > 0) {
      const mounts = await allMounts(ctx);
      const leaving = config.mounted ? ownMounts(config, mounts, (id) => ctx.store.volumeDir(id)) : new Set<MountedVolume>();
      for (const id of orphans) checkNotMounted(ctx, mounts, id, leaving);
    }
    // Mounted in another mount namespace, which this one cannot see through the mounter.
    for (const id of orphans) await checkNotMountedElsewhere(ctx, id);
  }
  await checkHandlerEnded(config, force);
  if (force) await unmountContainer(ctx, config);
  await ctx.store.deleteContainer(config);
  for (const id of orphans) await ctx.store.deleteVolumeDir(id);
  debugRuntime('removed container %s (%d volumes deleted)', containerId, orphans.length);
}

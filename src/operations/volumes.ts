import { ContainerVolumesError } from '../errors.js';
import type { Context } from '../context.js';
import { debugStore } from '../debug.js';
import { prepareVolumeContent } from '../rootfs/copy-up.js';
import { newId } from '../rules/ids.js';
import type { VolumeMount, VolumeUse } from '../types.js';
import type { MountedVolume } from '../mounter/mounter.js';
import { volumeIdOf } from '../plan/mount-owners.js';
import { isBelow } from '../rules/volume-path.js';

/**
 * Makes one new volume per path for `containerId`, each starting as a copy of the
 * rootfs content there unless `copyUp` is false. All or nothing: if one fails, those
 * already made are deleted. The caller writes the configuration naming them, then
 * calls `ctx.store.clearPending(containerId)`.
 */
export async function makeVolumes(
  ctx: Context,
  containerId: string,
  rootfs: string,
  paths: readonly string[],
  copyUp: boolean,
): Promise<VolumeMount[]> {
  if (paths.length === 0) return [];
  const planned: VolumeMount[] = paths.map((path) => ({ path, volumeId: newId(), mode: 'rw', origin: 'created' }));
  await ctx.store.recordPending(containerId, planned.map((v) => v.volumeId));
  const made: VolumeMount[] = [];
  try {
    for (const volume of planned) {
      await ctx.store.createVolumeDir(volume.volumeId);
      made.push(volume);
      await prepareVolumeContent(rootfs, volume.path, ctx.store.volumeDir(volume.volumeId), copyUp);
    }
    return made;
  } catch (error) {
    await discardVolumes(ctx, containerId, made);
    throw error;
  }
}

/** Undoes makeVolumes while another error is on its way: best effort, logged (recover() finishes the job). */
export async function discardVolumes(ctx: Context, containerId: string, made: readonly VolumeMount[]): Promise<void> {
  for (const { volumeId } of made) {
    await ctx.store.deleteVolumeDir(volumeId).catch((e: Error) => debugStore('discarding volume %s failed: %s', volumeId, e.message));
  }
  await ctx.store.clearPending(containerId).catch((e: Error) => debugStore('clearing the pending record of %s failed: %s', containerId, e.message));
}

/**
 * The containers that use `volumeId`, at which path and mode: the index names the
 * candidates, and each is confirmed against its configuration, which alone is the
 * truth. Under the lock (`prune` is true), entries found stale are dropped.
 */
export async function volumeUsers(ctx: Context, volumeId: string, prune = false): Promise<VolumeUse[]> {
  await ctx.store.open();
  // Outside the lock the index may be of another boot (no change has rebuilt it yet, or
  // none can: a read-only store): then every configuration is read instead.
  if (!(await ctx.store.indexIsCurrent())) return (await volumeReferences(ctx)).get(volumeId) ?? [];
  const index = ctx.store.index;
  const users: { use: VolumeUse; createdAt: string }[] = [];
  for (const containerId of index.candidates(volumeId)) {
    const config = await ctx.store.readContainer(containerId).catch((error: unknown) => {
      if (error instanceof ContainerVolumesError && error.code === 'ERR_CONTAINER_NOT_FOUND') return undefined;
      throw error;
    });
    const use = config?.volumes.find((v) => v.volumeId === volumeId);
    if (config && use) users.push({ use: { containerId, path: use.path, mode: use.mode }, createdAt: config.createdAt });
    else if (prune) index.remove(containerId, [volumeId]);
  }
  // Oldest container first, as list() orders them.
  users.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.use.containerId.localeCompare(b.use.containerId));
  return users.map((u) => u.use);
}

/** Which containers use each volume, for a listing of them all: read from every configuration. */
export async function volumeReferences(ctx: Context): Promise<Map<string, VolumeUse[]>> {
  const references = new Map<string, VolumeUse[]>();
  for (const config of await ctx.store.readAllContainers()) {
    for (const { volumeId, path, mode } of config.volumes) {
      const uses = references.get(volumeId) ?? [];
      uses.push({ containerId: config.id, path, mode });
      references.set(volumeId, uses);
    }
  }
  return references;
}

/**
 * Every mount of the mounter's namespace, by host path: read once by a call that may
 * delete volumes, then given to `checkNotMounted` for each.
 */
export function allMounts(ctx: Context): Promise<MountedVolume[]> {
  return ctx.mounter.list('/');
}

/**
 * Refuses to delete a volume that is mounted anywhere (its data would vanish under a
 * container that still sees it, and the mount would outlive it), or that has something
 * mounted inside its directory (the recursive delete would walk into that mount and
 * destroy data outside the store). `leaving` are mounts the caller is about to remove
 * itself (a forced remove's own, with their propagated copies).
 */
export function checkNotMounted(ctx: Context, mounts: readonly MountedVolume[], volumeId: string, leaving: ReadonlySet<MountedVolume> = new Set()): void {
  const dir = ctx.store.volumeDir(volumeId);
  const inside = mounts.filter((m) => m.path === dir || isBelow(m.path, dir)).map((m) => m.path);
  if (inside.length > 0) {
    throw new ContainerVolumesError('ERR_VOLUME_BUSY', `volume ${volumeId} cannot be deleted: something is mounted inside it at ${inside.join(', ')}`);
  }
  const at = mounts.filter((m) => volumeIdOf(ctx, m.source) === volumeId && !leaving.has(m)).map((m) => m.path);
  if (at.length > 0) {
    throw new ContainerVolumesError('ERR_VOLUME_BUSY', `volume ${volumeId} cannot be deleted: it is mounted at ${at.join(', ')}`);
  }
}

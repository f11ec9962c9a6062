import { ContainerVolumesError } from './errors.js';
import type { Context } from './context.js';
import { debugStore } from './debug.js';
import { prepareVolumeContent } from './rootfs/copy-up.js';
import type { VolumeMount, VolumeUse } from './types.js';

/**
 * Makes one new volume per path, each starting as a copy of the rootfs content there
 * unless `copyUp` is false. All or nothing: if one fails, those already made are deleted.
 */
export async function makeVolumes(ctx: Context, rootfs: string, paths: readonly string[], copyUp: boolean): Promise<VolumeMount[]> {
  const made: VolumeMount[] = [];
  try {
    for (const path of paths) {
      const volumeId = await ctx.store.createVolumeDir();
      made.push({ path, volumeId, mode: 'rw', origin: 'created' });
      await prepareVolumeContent(rootfs, path, ctx.store.volumeDir(volumeId), copyUp);
    }
    if (made.length > 0) await ctx.store.syncVolumes();
    return made;
  } catch (error) {
    await discardVolumes(ctx, made);
    throw error;
  }
}

/** Undoes makeVolumes while another error is on its way: best effort, logged. */
export async function discardVolumes(ctx: Context, made: readonly VolumeMount[]): Promise<void> {
  for (const { volumeId } of made) {
    await ctx.store.deleteVolumeDir(volumeId).catch((e: Error) => debugStore('discarding volume %s failed: %s', volumeId, e.message));
  }
}

/**
 * Which containers use each volume, at which path and mode: derived from the
 * configurations every time, never kept as a counter that could drift.
 */
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
 * Refuses to delete a volume that has something mounted inside its directory: the
 * recursive delete would walk into that mount and destroy data outside the store.
 */
export async function checkNothingMountedIn(ctx: Context, volumeId: string): Promise<void> {
  const inside = await ctx.mounter.list(ctx.store.volumeDir(volumeId));
  if (inside.length > 0) {
    throw new ContainerVolumesError(
      'ERR_VOLUME_BUSY',
      `volume ${volumeId} cannot be deleted: something is mounted inside it at ${inside.map((m) => m.path).join(', ')}`,
    );
  }
}

import type { Context } from './context.js';
import { ContainerVolumesError } from './errors.js';
import { currentMountNamespace, processInNamespace } from './mount-namespace.js';
import { type MountinfoEntry, readMountinfo } from './mounter/mountinfo.js';
import { knownNamespaces } from './store/namespace-registry.js';

/**
 * Refuses (ERR_VOLUME_BUSY) to delete a volume that is mounted in this mount namespace
 * or in any other live one the store knows of: the data would vanish from under
 * whatever runs there. Mounts at or below `exceptUnder` in this namespace are not
 * counted: they are those of a container being removed with force, detached first.
 *
 * A bind mount of a volume (or of a directory inside it) shows in every namespace's
 * mountinfo as the store's file system with the volume's directory, or one below it,
 * as its root: the same device and root wherever it is mounted.
 */
export async function checkNotMountedAnywhere(ctx: Context, volumeId: string, exceptUnder?: string): Promise<void> {
  const here = await readMountinfo();
  const volume = locate(ctx.store.volumeDir(volumeId), here);
  if (volume === undefined) return;
  const own = currentMountNamespace().namespace;
  const found = (mounts: readonly MountinfoEntry[]) =>
    mounts.find((m) => m.device === volume.device && (m.root === volume.root || m.root.startsWith(`${volume.root}/`)));
  const skipped = exceptUnder === undefined ? here : here.filter((m) => m.mountPoint !== exceptUnder && !m.mountPoint.startsWith(`${exceptUnder}/`));
  const local = found(skipped);
  if (local) throw busy(volumeId, local, own);
  for (const ns of knownNamespaces(ctx.store.root)) {
    if (ns.namespace === own) continue;
    const pid = processInNamespace(ns, ns.bootId);
    if (pid === undefined) continue;
    let mounts: MountinfoEntry[];
    try {
      mounts = await readMountinfo(`/proc/${pid}/mountinfo`);
    } catch {
      continue; // its last process exited meanwhile: the namespace is gone
    }
    const there = found(mounts);
    if (there) throw busy(volumeId, there, `${ns.namespace} (process ${pid})`);
  }
}

function busy(volumeId: string, mount: MountinfoEntry, where: string): ContainerVolumesError {
  return new ContainerVolumesError('ERR_VOLUME_BUSY', `volume ${volumeId} cannot be deleted: it is mounted at ${mount.mountPoint} in mount namespace ${where}`);
}

/** The device and file-system path of a directory, through the mount that holds it here (the deepest one above it). */
function locate(dir: string, mounts: readonly MountinfoEntry[]): { device: string; root: string } | undefined {
  let holder: MountinfoEntry | undefined;
  for (const m of mounts) {
    const above = m.mountPoint === '/' || dir === m.mountPoint || dir.startsWith(`${m.mountPoint}/`);
    if (above && (!holder || m.mountPoint.length >= holder.mountPoint.length)) holder = m;
  }
  if (!holder) return undefined;
  const rest = holder.mountPoint === '/' ? dir : dir.slice(holder.mountPoint.length);
  return { device: holder.device, root: holder.root === '/' ? rest || '/' : `${holder.root}${rest}` };
}

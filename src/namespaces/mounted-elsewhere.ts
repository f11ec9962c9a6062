import { readlinkSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { ContainerVolumesError } from '../errors.js';
import { currentMountNamespace, type MountNamespace, processInNamespace, processesIn } from './mount-namespace.js';
import { type MountinfoEntry, readMountinfo } from '../mounter/mountinfo.js';
import { currentBootId } from '../store/boot-id.js';
import type { ContainerConfig } from '../store/container-config.js';
import { forgetNamespace, knownNamespaces } from '../store/namespace-registry.js';

/*
 * Mounts made in one mount namespace are invisible in every other, and this process
 * cannot enter another (Node is multi-threaded: `setns` refuses). So before acting on a
 * container mounted elsewhere, or deleting a volume, we read what the other namespaces
 * have mounted, through `/proc/<pid>/mountinfo` of a process in each.
 *
 * A bind mount of a volume (or of a directory inside it) shows in every namespace as the
 * store's file system with the volume's directory, or one below it, as its root: the
 * same device and root wherever, whatever path it was mounted at. A namespace whose id
 * the kernel gave to a new namespace after the recorded one died has none of them: what
 * matters is whether the volumes are mounted there, not whose namespace it is.
 */

/**
 * Where a container's mounts are, as this process sees them: `'here'` (its own
 * namespace; also a record that names none), `'nowhere'` (not mounted; mounted in a
 * namespace that is gone or in an earlier boot; or none of its volumes is mounted in
 * the namespace recorded), or the other namespace, which holds its mounts.
 */
export async function whereMounted(ctx: Context, config: ContainerConfig): Promise<'here' | 'nowhere' | MountNamespace> {
  if (!config.mounted) return 'nowhere';
  if (config.mountedInBoot !== undefined && config.mountedInBoot !== currentBootId()) return 'nowhere';
  const ns = config.mountedIn;
  if (ns === undefined || ns.namespace === currentMountNamespace().namespace) return 'here';
  return (await namespaceHolds(ctx, ns, currentBootId(), config.volumes.map((v) => v.volumeId))) ? ns : 'nowhere';
}

/**
 * Whether the namespace, recorded in boot `bootId`, lives and has at least one of the
 * volumes (or a directory inside one) mounted: a namespace whose id was given to a new
 * one after it died holds none of them.
 */
export async function namespaceHolds(ctx: Context, ns: MountNamespace, bootId: string, volumeIds: readonly string[]): Promise<boolean> {
  const there = await mountsOf(ns, bootId);
  if (there === undefined) return false;
  const volumes = await locateVolumes(ctx, volumeIds);
  return there.some((m) => volumes.some((v) => holds(v, m)));
}

/** The refusal of a change that would have to be made in another mount namespace. */
export function mountedElsewhere(config: ContainerConfig, ns: MountNamespace, doing: string): ContainerVolumesError {
  return new ContainerVolumesError(
    'ERR_MOUNTED_IN_OTHER_NAMESPACE',
    `cannot ${doing} container ${config.id}: it is mounted in mount namespace ${ns.namespace} (process ${ns.pid}), not in this process's ${currentMountNamespace().namespace}; do it from a process in that namespace`,
  );
}

/**
 * Refuses (ERR_VOLUME_BUSY) to delete a volume that is mounted in another mount
 * namespace the store knows of, where the mounter cannot see: the data would vanish from
 * under whatever runs there. (Mounts in this namespace are the mounter's to report.)
 */
export async function checkNotMountedElsewhere(ctx: Context, volumeId: string): Promise<void> {
  const own = currentMountNamespace().namespace;
  const others = knownNamespaces(ctx.store.root).filter((ns) => ns.namespace !== own);
  if (others.length === 0) return;
  const [volume] = await locateVolumes(ctx, [volumeId]);
  if (volume === undefined) return;
  for (const ns of others) {
    const mount = (await mountsOf(ns, ns.bootId))?.find((m) => holds(volume, m));
    if (mount) throw busy(volumeId, mount, ns.namespace);
  }
}

function busy(volumeId: string, mount: MountinfoEntry, namespace: string): ContainerVolumesError {
  return new ContainerVolumesError('ERR_VOLUME_BUSY', `volume ${volumeId} cannot be deleted: it is mounted at ${mount.mountPoint} in mount namespace ${namespace}`);
}

/** What is mounted in a namespace now; undefined once no process has it. */
async function mountsOf(ns: MountNamespace, bootId: string): Promise<MountinfoEntry[] | undefined> {
  const tried = new Set<number>();
  // The process found may exit before its mountinfo is read (a `mount` spawned there
  // lives a few milliseconds), or its pid be taken by a process elsewhere: the namespace
  // is judged gone only once no process is left in it, not when one of them is.
  for (let pid = processInNamespace(ns, bootId); pid !== undefined; pid = processesIn(ns.namespace).find((p) => !tried.has(p))) {
    tried.add(pid);
    try {
      const mounts = await readMountinfo(`/proc/${pid}/mountinfo`);
      if (readlinkSync(`/proc/${pid}/ns/mnt`) === ns.namespace) return mounts;
    } catch {
      // Exited meanwhile: another process may still be in the namespace.
    }
  }
  return undefined;
}

interface LocatedVolume {
  device: string;
  /** The volume directory's path inside its file system. */
  root: string;
}

/** The volumes' directories as mountinfo shows their binds, through the mount that holds the store here. */
async function locateVolumes(ctx: Context, volumeIds: readonly string[]): Promise<LocatedVolume[]> {
  const here = await readMountinfo();
  return volumeIds.map((id) => locate(ctx.store.volumeDir(id), here)).filter((v) => v !== undefined);
}

async function locateVolumesDirectory(ctx: Context): Promise<LocatedVolume | undefined> {
  return locate(path.join(ctx.store.root, 'volumes'), await readMountinfo());
}

function locate(dir: string, here: MountinfoEntry[]): LocatedVolume | undefined {
  let holder: MountinfoEntry | undefined;
  for (const m of here) {
    const above = m.mountPoint === '/' || dir === m.mountPoint || dir.startsWith(`${m.mountPoint}/`);
    // The later of two at one path is on top.
    if (above && (!holder || m.mountPoint.length >= holder.mountPoint.length)) holder = m;
  }
  if (!holder) return undefined;
  const rest = holder.mountPoint === '/' ? dir : dir.slice(holder.mountPoint.length);
  return { device: holder.device, root: holder.root === '/' ? rest || '/' : `${holder.root}${rest}` };
}

/** Whether the mount shows the directory, or one below it (a directory that is the root of its file system holds all). */
function holds(dir: LocatedVolume, mount: MountinfoEntry): boolean {
  return mount.device === dir.device && (dir.root === '/' || mount.root === dir.root || mount.root.startsWith(`${dir.root}/`));
}

/**
 * Forgets the recorded namespaces that hold no volume of the store any more (gone, or
 * their id given to a new namespace), and resolves to their registry files. A namespace
 * that mounts a volume again records itself again first.
 */
export async function forgetIdleNamespaces(ctx: Context): Promise<string[]> {
  const own = currentMountNamespace().namespace;
  const volumes = await locateVolumesDirectory(ctx);
  const forgotten: string[] = [];
  for (const ns of knownNamespaces(ctx.store.root)) {
    if (ns.namespace === own) continue;
    const mounts = await mountsOf(ns, ns.bootId);
    if (mounts && volumes && mounts.some((m) => holds(volumes, m))) continue;
    ctx.store.assertLocked();
    forgetNamespace(ctx.store.root, ns.namespace);
    forgotten.push(`namespaces/${ns.namespace.slice(5, -1)}.json`);
  }
  return forgotten;
}

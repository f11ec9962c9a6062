import { ContainerVolumesError } from '../errors.js';
import { debugMount } from '../debug.js';
import type { MountedVolume, Mounter, MountRequest, MountTarget } from '../mounter/mounter.js';
import { directoryIdentity } from '../mounter/identity.js';
import { landRequests } from '../mounter/mount-target.js';
import { VOLUME_MOUNT_FLAGS } from '../rules/mount-options.js';
import { compareParentsFirst, isBelow } from '../rules/volume-path.js';
import type { ContainerConfig } from '../store/container-config.js';

/**
 * A container's mounts as data, parents first, at the paths its configuration gives:
 * computed from the configuration alone, comparable in tests, and what the exporters
 * turn into OCI `mounts` or LXC entries (a runtime resolves those paths in the rootfs
 * itself). Every mount's options follow from its mode (`volumeMountOptions`).
 */
export function planMounts(container: PlannedContainer, volumeDir: (volumeId: string) => string): MountRequest[] {
  const { idmap } = container;
  return container.volumes
    .map((v) => ({ source: volumeDir(v.volumeId), rootfs: container.rootfs, path: v.path, mode: v.mode, ...(idmap ? { idmap } : {}) }))
    .sort((a, b) => compareParentsFirst(a.path, b.path));
}

/** What of a configuration the plan follows from: every volume takes the container's own mapping, wherever it was shared from. */
type PlannedContainer = Pick<ContainerConfig, 'rootfs' | 'volumes' | 'idmap'>;

/**
 * Refuses a plan whose mounts must be idmapped when the mounter does not declare it
 * can make them: mounted plain, the container would see every owner wrong and write
 * files with its host ids. `who` names the container (or the rootfs) in the message.
 */
export function checkIdmapSupport(mounter: Mounter, plan: readonly MountRequest[], who: string): void {
  if (mounter.supportsIdmap === true || !plan.some((r) => r.idmap)) return;
  throw new ContainerVolumesError(
    'ERR_IDMAP_UNSUPPORTED',
    `${who} declares a user-namespace mapping (idmap), so its volumes must be mounted idmapped, and its mounter does not declare it can make idmapped mounts (supportsIdmap): ` +
      "that needs BindMounter's kernel mount engine (util-linux's mount cannot before 2.39), or a mounter that declares supportsIdmap",
  );
}

/**
 * The plan as this host mounts it: each path where it lands in the rootfs as the rootfs
 * is now (see `landRequests`), parents first. A rootfs that cannot be walked keeps the
 * paths as given: unmounting and recovery must still be able to judge such a container,
 * and mounting it fails in the mounter, which names the rootfs.
 */
/**
 * Refuses volume paths of one container that would land on one directory of its rootfs
 * or on the rootfs itself (see `landRequests`), before anything is made for them.
 */
export function checkPlaces(rootfs: string, paths: readonly string[]): void {
  try {
    landRequests(paths.map((path) => ({ rootfs, path })));
  } catch (error) {
    if (error instanceof ContainerVolumesError && error.code === 'ERR_INVALID_ROOTFS') return;
    throw error;
  }
}

export function placeMounts(container: PlannedContainer, volumeDir: (volumeId: string) => string): MountRequest[] {
  const plan = planMounts(container, volumeDir);
  try {
    return landRequests(plan).sort((a, b) => compareParentsFirst(a.path, b.path));
  } catch (error) {
    if (error instanceof ContainerVolumesError && error.code === 'ERR_INVALID_ROOTFS') return plan;
    throw error;
  }
}

/**
 * The topmost mount at the request's path (the one a process in the container sees),
 * if it is this very volume. The mounter names the source by a host path, which may be
 * another path to the same directory (the store reached through another bind mount),
 * so differing paths are compared by identity. A mount the mounter cannot attribute is
 * never ours.
 */
export async function mountedThere(present: readonly MountedVolume[], request: MountRequest): Promise<MountedVolume | undefined> {
  const top = present.filter((m) => m.path === request.path).pop();
  return top && (await sameDirectory(top.source, request.source)) ? top : undefined;
}

async function sameDirectory(a: string | undefined, b: string): Promise<boolean> {
  if (a === undefined) return false;
  if (a === b) return true;
  const x = await directoryIdentity(a);
  return x !== undefined && x === (await directoryIdentity(b));
}

/** The plan's mounts that are in place now. */
export async function mountedOf(mounter: Mounter, plan: readonly MountRequest[]): Promise<MountRequest[]> {
  const first = plan[0];
  if (first === undefined) return [];
  const present = await mounter.list(first.rootfs);
  const found: MountRequest[] = [];
  for (const request of plan) if (await mountedThere(present, request)) found.push(request);
  return found;
}

/**
 * Makes the mounts of `plan` that are not already in place, parents first, in one
 * batch when the mounter can, and resolves to them. A half-made mount of ours at a
 * path (see `MountedVolume.options`) is detached first, not stacked upon; a volume
 * below one that is mounted again is mounted again too, since the new parent mount
 * covers it. `listed` is what the mounter listed under the rootfs, when the caller
 * already asked (under the same lock). `guard` runs before mounting and once after (it
 * throws when the store's lock was lost). If anything fails, the mounts made by this
 * call are undone (children first) and the error names the path.
 */
export async function applyPlan(
  mounter: Mounter,
  plan: readonly MountRequest[],
  guard: () => void,
  listed?: readonly MountedVolume[],
): Promise<MountRequest[]> {
  const first = plan[0];
  if (first === undefined) return [];
  checkIdmapSupport(mounter, plan, `the container of rootfs ${first.rootfs}`);
  const present = listed ?? (await mounter.list(first.rootfs));
  const missing: MountRequest[] = [];
  const halfMade: MountRequest[] = [];
  for (const request of plan) {
    const top = await mountedThere(present, request);
    if (top && isAsAsked(top, request) && !missing.some((m) => isBelow(request.path, m.path))) continue;
    missing.push(request);
    if (top && !isComplete(top)) halfMade.push(request);
  }
  if (missing.length === 0) return [];
  if (halfMade.length > 0) {
    try {
      await unmountTargets(mounter, [...halfMade].reverse(), guard);
    } catch (error) {
      throw namingPath(error, 'ERR_UNMOUNT_FAILED', `detaching half-made mounts in rootfs ${first.rootfs} failed`);
    }
  }
  const made = mounter.mountAll ? await mountBatch(mounter, mounter.mountAll, missing, guard) : await mountEach(mounter, missing, guard);
  try {
    guard();
  } catch (error) {
    await revertPlan(mounter, made);
    throw error;
  }
  return missing;
}

/**
 * Whether a mount of the request's volume at its path is what the request asks for:
 * complete, in its mode, and idmapped when the container has a mapping (mountinfo shows
 * `idmapped`; which mapping it does not show, and a container's mapping never changes).
 */
export function isAsAsked(mount: MountedVolume, request: MountRequest): boolean {
  const idmapped = request.idmap === undefined || mount.options === undefined || mount.options.includes('idmapped');
  return isComplete(mount) && mount.mode === request.mode && idmapped;
}

/** Whether a mount shows the options every volume mount gets (when the mounter tells them). */
export function isComplete(mount: MountedVolume): boolean {
  return mount.options === undefined || VOLUME_MOUNT_FLAGS.every((flag) => mount.options?.includes(flag));
}

async function mountBatch(
  mounter: Mounter,
  mountAll: NonNullable<Mounter['mountAll']>,
  requests: readonly MountRequest[],
  guard: () => void,
): Promise<readonly MountRequest[]> {
  guard();
  try {
    await mountAll.call(mounter, requests);
  } catch (error) {
    const { rootfs } = requests[0] as MountRequest;
    throw namingPath(error, 'ERR_MOUNT_FAILED', `mounting the volumes of rootfs ${rootfs} failed`);
  }
  return requests;
}

async function mountEach(mounter: Mounter, requests: readonly MountRequest[], guard: () => void): Promise<readonly MountRequest[]> {
  const made: MountRequest[] = [];
  for (const request of requests) {
    try {
      guard();
      await mounter.mount(request);
    } catch (error) {
      await revertPlan(mounter, made);
      throw namingPath(error, 'ERR_MOUNT_FAILED', `mounting ${request.path} in rootfs ${request.rootfs} failed`);
    }
    made.push(request);
  }
  return made;
}

/** How many rounds `removePlan` makes to catch mounts whose paths change under it. */
const UNMOUNT_ROUNDS = 64;

/**
 * Unmounts what of `plan` is mounted, children first, in one batch when the mounter
 * can, running `guard` first. If that fails, what this call unmounted is mounted
 * again so the container is left as it was.
 *
 * A process in the container can rename a directory above a mount point while we
 * unmount: the mount then sits at a path the plan does not name, and a path we unmount
 * may lead nowhere. So success is judged by identity, not by path: the mounts of the
 * plan's volumes under the rootfs must drop by as many as we set out to remove (a
 * second container on the same rootfs, or on a rootfs inside it, may hold its own:
 * `heldByOther` tells), wherever they are now.
 */
export async function removePlan(
  mounter: Mounter,
  plan: readonly MountRequest[],
  guard: () => void,
  heldByOther: (mount: MountedVolume) => Promise<boolean> = async () => false,
): Promise<void> {
  const first = plan[0];
  if (first === undefined) return;
  const planned = new Set(plan.map((r) => r.path));
  // One listing for both, or a mount renamed between two would be counted twice.
  const present = await mounter.list(first.rootfs);
  const initial = await ofPlan(present, plan);
  const mounted: MountRequest[] = [];
  for (const request of plan) if (await mountedThere(present, request)) mounted.unshift(request);
  // Elsewhere under the rootfs: ours moved by a rename, unless another container holds
  // it there (one whose rootfs lies inside this one and shares the volume).
  const moved: MountedVolume[] = [];
  const others = new Set<string>();
  for (const m of initial.filter((m) => !planned.has(m.path))) {
    if (await heldByOther(m)) others.add(m.path);
    else moved.push(m);
  }
  // Stacked below ours at a planned path, or held by another container: to keep.
  const kept = initial.length - mounted.length - moved.length;
  let targets: MountTarget[] = [...mounted, ...moved.reverse().map((m) => ({ rootfs: first.rootfs, path: m.path }))];
  for (let round = 0; targets.length > 0; round++) {
    try {
      await unmountTargets(mounter, targets, guard);
    } catch (error) {
      const still = await mountedOf(mounter, plan).catch(() => plan);
      await restore(mounter, mounted.filter((m) => !still.includes(m)).reverse());
      throw namingPath(error, 'ERR_UNMOUNT_FAILED', `unmounting the volumes of rootfs ${first.rootfs} failed`);
    }
    const left = await ofPlan(await mounter.list(first.rootfs), plan);
    if (left.length <= kept) return;
    if (round + 1 === UNMOUNT_ROUNDS) {
      throw new ContainerVolumesError(
        'ERR_UNMOUNT_FAILED',
        `unmounting the volumes of rootfs ${first.rootfs} failed: still mounted at ${left.map((m) => m.path).join(', ')} after ${UNMOUNT_ROUNDS} attempts (paths in the rootfs kept changing)`,
      );
    }
    targets = [...new Set(left.map((m) => m.path))]
      .filter((p) => !others.has(p))
      .reverse()
      .map((p) => ({ rootfs: first.rootfs, path: p }));
  }
}

/** The mounts of the plan's volumes among `present`, recognised by path or else by identity. */
async function ofPlan(present: readonly MountedVolume[], plan: readonly MountRequest[]): Promise<MountedVolume[]> {
  const sources = new Set(plan.map((r) => r.source));
  let identities: Promise<Set<string | undefined>> | undefined;
  const found: MountedVolume[] = [];
  for (const m of present) {
    if (m.source === undefined) continue;
    if (sources.has(m.source)) {
      found.push(m);
      continue;
    }
    // Another path to a directory: compare identities, read only when one is needed.
    identities ??= Promise.all(plan.map((r) => directoryIdentity(r.source))).then((ids) => new Set(ids.filter((id) => id !== undefined)));
    const identity = await directoryIdentity(m.source);
    if (identity !== undefined && (await identities).has(identity)) found.push(m);
  }
  return found;
}


async function unmountTargets(mounter: Mounter, targets: readonly MountTarget[], guard: () => void): Promise<void> {
  guard();
  if (mounter.unmountAll) return mounter.unmountAll(targets);
  for (const target of targets) {
    guard();
    await mounter.unmount(target);
  }
}

/** Best effort by nature: it runs while another error is already on its way to the caller. */
async function revertPlan(mounter: Mounter, made: readonly MountRequest[]): Promise<void> {
  if (mounter.unmountAll) {
    await mounter.unmountAll([...made].reverse()).catch((e: Error) => debugMount('rollback: unmounting failed: %s', e.message));
    return;
  }
  for (const request of [...made].reverse()) {
    await mounter.unmount(request).catch((e: Error) => debugMount('rollback: unmounting %s failed: %s', request.path, e.message));
  }
}

async function restore(mounter: Mounter, removed: readonly MountRequest[]): Promise<void> {
  if (removed.length === 0) return;
  if (mounter.mountAll) {
    await mounter.mountAll(removed).catch((e: Error) => debugMount('rollback: remounting failed: %s', e.message));
    return;
  }
  for (const request of removed) {
    await mounter.mount(request).catch((e: Error) => debugMount('rollback: remounting %s failed: %s', request.path, e.message));
  }
}

/** Our own errors already name the path and carry the precise code; a custom mounter's are wrapped. */
function namingPath(error: unknown, code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', message: string): Error {
  if (error instanceof ContainerVolumesError) return error;
  return new ContainerVolumesError(code, `${message}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}

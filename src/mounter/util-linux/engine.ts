import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError, MountCommandError } from '../../errors.js';
import { debugMount } from '../../debug.js';
import { O_PATH_DIRECTORY, hostPathOf, openBelow, openChild, openInRootfs, procPathOf, type PinnedDirectory } from '../../rootfs/open-in-rootfs.js';
import { VOLUME_MOUNT_PROPAGATION, volumeMountOptions } from '../../rules/mount-options.js';
import { isBelow } from '../../rules/volume-path.js';
import { mountIdOf, sameInode } from '../identity.js';
import type { MountRequest, MountTarget } from '../mounter.js';
import { type MountinfoEntry, readMountinfo } from '../mountinfo.js';
import { OWN_NAMESPACE, type Namespace } from '../target-namespace.js';
import { NOTHING_MOUNTED, commandFailed, linesAbout, run, withFstab } from './commands.js';
import { prepareStaging, stagingDirectory, unstage } from './staging.js';

/**
 * Bind mounts through util-linux's `mount` and `umount`, run by execa with argument
 * arrays: the engine for kernels or installs without the kernel's mount API, and for
 * another process's mount namespace, which Node cannot enter itself.
 *
 * A whole container costs a constant number of processes, whatever its number of
 * volumes: one `mount -a` per level of nesting makes the binds, one more applies
 * `nosuid,nodev`, the mode and private propagation to all of them (so a child's mount
 * point can still be made inside a parent that becomes read-only), and one `umount`
 * detaches them all. The commands read a generated fstab in which every target is
 * `/proc/<pid>/fd/<n>`, a descriptor opened inside the rootfs, so no path string is
 * resolved again between the safety check and the mount. After the bind, the mount
 * point is opened again through its pinned parent (a mount point cannot be renamed or
 * removed) and must be the source directory on a new mount; after the remount,
 * mountinfo must show the options asked for on that very mount id. Anything else is
 * undone and reported, never left writable.
 *
 * The paths are where the volumes land in their rootfs, symlinks there followed already
 * (BindMounter lands them first): the walks here follow none, so a symlink met now was
 * swapped in since, and is refused rather than followed to another place.
 */
export async function mountWithUtilLinux(ns: Namespace, requests: readonly MountRequest[]): Promise<void> {
  const levels = byNesting(requests);
  // Refuse a symlink or a file on any path before the first mount point is created.
  for (const request of levels[0] ?? []) probe(ns, request);
  const made: MadeMount[] = [];
  try {
    for (const level of levels) await bindLevel(ns, level, made);
    await remount(ns, made);
    await moveStaged(ns, made);
    await verify(ns, made);
  } catch (error) {
    await detachMade(ns, made).catch((e: Error) => debugMount('rollback failed: %s', e.message));
    throw error;
  } finally {
    for (const m of made) {
      closeSync(m.fd);
      m.parent.close();
      if (m.staged) unstage(m.staged);
    }
  }
}

/** Detaches the topmost mount at each target, in the order given; nothing mounted there is success. */
export async function unmountWithUtilLinux(ns: Namespace, targets: readonly MountTarget[]): Promise<void> {
  const open: { target: MountTarget; fd: number }[] = [];
  try {
    for (const target of targets) {
      const fd = openMountPoint(ns, target);
      if (fd !== null) open.push({ target, fd });
    }
    await detach(ns, open);
  } finally {
    for (const { fd } of open) closeSync(fd);
  }
}

/** A mount made by this mounter: the pinned parent of its mount point, and a descriptor on the mount itself. */
interface MadeMount {
  request: MountRequest;
  parent: PinnedDirectory;
  name: string;
  /** Opened through the parent after the bind: names the new mount, not the directory it covers. */
  fd: number;
  /** Set while the mount waits in a private staging directory, to be moved onto `target` (see `staging`). */
  staged?: { dir: string; target: number };
}

/**
 * Splits requests into levels: a request goes one level after the deepest earlier
 * request of the same rootfs whose path contains it, since its mount point can only be
 * opened once that parent is mounted. Flat containers are one level.
 */
function byNesting(requests: readonly MountRequest[]): MountRequest[][] {
  const levels: MountRequest[][] = [];
  const levelOf: number[] = [];
  requests.forEach((request, i) => {
    let level = 0;
    for (let j = 0; j < i; j++) {
      const earlier = requests[j] as MountRequest;
      if (earlier.rootfs === request.rootfs && isBelow(request.path, earlier.path)) level = Math.max(level, (levelOf[j] as number) + 1);
    }
    levelOf.push(level);
    (levels[level] ??= []).push(request);
  });
  return levels;
}

/** Binds one level of requests in one `mount -a`; each mount made is checked, then added to `made`. */
async function bindLevel(ns: Namespace, requests: readonly MountRequest[], made: MadeMount[]): Promise<void> {
  const pending: PendingBind[] = [];
  try {
    const mounts = new Map((await readMountinfo(ns.mountinfo)).map((e) => [e.id, e]));
    for (const request of requests) pending.push(openBind(ns, request, made, mounts));
    if (pending.some((p) => p.onShared)) await prepareStaging();
    for (const p of pending) {
      if (!p.onShared) continue;
      p.stageDir = stagingDirectory();
      p.bindTarget = openSync(p.stageDir, O_PATH_DIRECTORY | fsConstants.O_NOFOLLOW);
    }
    const lines = pending.map((p) => `${procPathOf(p.source)} ${procPathOf(p.bindTarget)} none bind 0 0`);
    const result = await withFstab(lines, (fstab) => run(ns, ['mount', '-a', '--no-canonicalize', '-T', fstab]));
    let failure: unknown;
    for (const p of pending) {
      let fd: number | null = null;
      try {
        fd = p.stageDir
          ? openSync(p.stageDir, O_PATH_DIRECTORY | fsConstants.O_NOFOLLOW)
          : openChild(p.parent.fd, p.name, false, p.request.rootfs, p.request.path);
      } catch (error) {
        failure ??= naming(error, p.request);
      }
      // A new mount at the mount point, showing the source directory: the bind took.
      if (fd !== null && mountIdOf(fd) !== p.mountId && sameInode(fd, p.source)) {
        made.push({ request: p.request, parent: p.parent, name: p.name, fd, ...(p.stageDir ? { staged: { dir: p.stageDir, target: p.target } } : {}) });
        continue;
      }
      if (fd !== null) closeSync(fd);
      if (!p.stageDir && !(await undoMovedBind(ns, p))) {
        failure ??= new ContainerVolumesError(
          'ERR_MOUNT_FAILED',
          `${describeMount(p.request)} failed: ${p.request.path} was renamed while it was being mounted, and the bind that followed it (now at ${hostPathOf(p.target)}) could not be undone`,
        );
      }
      failure ??=
        result.exitCode === 0
          ? new ContainerVolumesError('ERR_PATH_ESCAPES_ROOTFS', `${describeMount(p.request)} refused: ${p.request.path} changed while it was being mounted`)
          : commandFailed('ERR_MOUNT_FAILED', describeMount(p.request), result, procPathOf(p.bindTarget));
    }
    if (failure !== undefined) throw failure;
  } finally {
    for (const p of pending) {
      const mine = made.find((m) => m.parent === p.parent);
      if (p.bindTarget !== p.target) closeSync(p.bindTarget);
      if (!mine?.staged) closeSync(p.target);
      closeSync(p.source);
      if (!mine) {
        p.parent.close();
        if (p.stageDir) unstage({ dir: p.stageDir });
      }
    }
  }
}

/** How many times a bind that followed its renamed mount point is looked for before giving up. */
const MOVED_BIND_LOOKUPS = 64;

/**
 * The bind of `p` does not show at its mount point: the directory was renamed (or
 * swapped for a symlink, CVE-2021-30465) after we opened it, and the bind landed on the
 * directory wherever it went, still on the same mount, since a rename cannot cross
 * mounts. Finds it through the descriptor's parent and current name and detaches it,
 * so that a refused mount leaves nothing behind, writable or not.
 */
async function undoMovedBind(ns: Namespace, p: PendingBind): Promise<boolean> {
  for (let lookup = 0; lookup < MOVED_BIND_LOOKUPS; lookup++) {
    let fd: number;
    try {
      const parent = openSync(`/proc/self/fd/${p.target}/..`, O_PATH_DIRECTORY);
      try {
        fd = openSync(`/proc/self/fd/${parent}/${path.posix.basename(hostPathOf(p.target))}`, O_PATH_DIRECTORY | fsConstants.O_NOFOLLOW);
      } finally {
        closeSync(parent);
      }
    } catch {
      continue; // renamed again between the two reads: look again
    }
    try {
      const id = mountIdOf(fd);
      if (id === p.mountId && sameInode(fd, p.target)) return true; // the directory itself: nothing is mounted on it
      if (id !== p.mountId && sameInode(fd, p.source)) await detach(ns, [{ target: p.request, fd }]);
    } finally {
      closeSync(fd);
    }
  }
  return false;
}

interface PendingBind {
  request: MountRequest;
  parent: PinnedDirectory;
  name: string;
  /** The mount point before the bind, and the mount it is on. */
  target: number;
  mountId: number;
  source: number;
  /**
   * The mount point is on a shared mount: a bind made there directly would propagate
   * to the peers before the remount made it read-only, nosuid and nodev, so it is made
   * in a staging directory and moved there afterwards.
   */
  onShared: boolean;
  /** Where the bind is made: the mount point, or the staging directory. */
  bindTarget: number;
  stageDir?: string;
}

/**
 * Walks the request's path as far as it exists, creating nothing: a symlink or a
 * non-directory on it is refused before anything is changed. Only for requests not
 * nested in another of the call, whose paths the parent's mount will cover.
 */
function probe(ns: Namespace, request: MountRequest): void {
  try {
    openInRootfs(request.rootfs, request.path, { follow: false, fsRoot: ns.fsRoot })?.close();
  } catch (error) {
    throw naming(error, request);
  }
}

/** A refusal met on the way names the volume's path, not only the component that was refused. */
function naming(error: unknown, request: MountRequest): unknown {
  if (!(error instanceof ContainerVolumesError) || error instanceof MountCommandError) return error;
  return new ContainerVolumesError(error.code, `cannot mount a volume at ${request.path}: ${error.message}`, { cause: error });
}

/** Opens what one bind needs. A mount point inside a volume still waiting in staging is opened inside that staged mount. */
function openBind(ns: Namespace, request: MountRequest, made: readonly MadeMount[], mounts: Map<number, MountinfoEntry>): PendingBind {
  let parent: PinnedDirectory;
  try {
    parent = openParent(ns, request, made);
  } catch (error) {
    throw naming(error, request);
  }
  const name = path.posix.basename(request.path);
  let target: number | undefined;
  try {
    target = openChild(parent.fd, name, true, request.rootfs, request.path) as number;
    const mountId = mountIdOf(target);
    const source = openSource(ns, request);
    // A namespace of a handler is private throughout: nothing there can propagate.
    const onShared = ns === OWN_NAMESPACE && (mounts.get(mountIdOf(parent.fd))?.propagation.some((tag) => tag.startsWith('shared:')) ?? false);
    return { request, parent, name, target, mountId, source, onShared, bindTarget: target };
  } catch (error) {
    if (target !== undefined) closeSync(target);
    parent.close();
    throw naming(error, request);
  }
}

/** The directory holding the request's mount point: inside a staged ancestor of the same call if there is one. */
function openParent(ns: Namespace, request: MountRequest, made: readonly MadeMount[]): PinnedDirectory {
  const dir = path.posix.dirname(request.path);
  const staged = made
    .filter((m) => m.staged && m.request.rootfs === request.rootfs && isBelow(request.path, m.request.path))
    .sort((a, b) => b.request.path.length - a.request.path.length)[0];
  if (!staged) return openInRootfs(request.rootfs, dir, { create: true, follow: false, fsRoot: ns.fsRoot });
  const fd = openBelow(staged.fd, path.posix.relative(staged.request.path, dir), request.rootfs, request.path);
  return { fd, hostPath: hostPathOf(fd), procPath: procPathOf(fd), close: () => closeSync(fd) };
}

function openSource(ns: Namespace, request: MountRequest): number {
  try {
    return openSync(path.join(ns.fsRoot, request.source), O_PATH_DIRECTORY);
  } catch (error) {
    throw new ContainerVolumesError('ERR_MOUNT_FAILED', `${describeMount(request)} failed: the volume directory cannot be opened (${(error as Error).message})`, {
      cause: error,
    });
  }
}

/** Applies `nosuid,nodev`, the mode and private propagation to every mount made, in one `mount -a`. */
async function remount(ns: Namespace, made: readonly MadeMount[]): Promise<void> {
  if (made.length === 0) return;
  const lines = made.map((m) => `none ${procPathOf(m.fd)} none ${['remount', 'bind', ...volumeMountOptions(m.request.mode), VOLUME_MOUNT_PROPAGATION].join(',')} 0 0`);
  const result = await withFstab(lines, (fstab) => run(ns, ['mount', '-a', '--no-canonicalize', '-T', fstab]));
  if (result.exitCode !== 0) debugMount('remount exited %d: %s', result.exitCode, result.stderr);
}

/** Reads the mounts back by mount id: each must show the options asked for, and be private. */
async function verify(ns: Namespace, made: readonly MadeMount[]): Promise<void> {
  if (made.length === 0) return;
  const byId = new Map((await readMountinfo(ns.mountinfo)).map((e) => [e.id, e]));
  for (const m of made) {
    const entry = byId.get(mountIdOf(m.fd));
    const wanted = volumeMountOptions(m.request.mode);
    const missing = wanted.filter((option) => !entry?.options.includes(option));
    // A tree moved under a shared mount point joins its peer group: that is how its copies follow it.
    const moved = made.some((a) => a.staged && a.request.rootfs === m.request.rootfs && (a === m || isBelow(m.request.path, a.request.path)));
    const isolated = moved || entry?.propagation.length === 0;
    if (entry && missing.length === 0 && isolated) continue;
    const shows = entry ? `${entry.options.join(',')} ${entry.propagation.join(' ')}`.trim() : 'no mount';
    throw new ContainerVolumesError(
      'ERR_MOUNT_FAILED',
      `${describeMount(m.request)}: /proc/self/mountinfo does not show ${[...missing, VOLUME_MOUNT_PROPAGATION].join(',')} in effect (it shows ${shows})`,
    );
  }
}

/**
 * Moves each staged mount, now read-only, nosuid and nodev, onto its mount point, one
 * `mount --move` each (util-linux 2.38's `mount -a` cannot move). The kernel
 * propagates the moved mount, flags included, to the peers of a shared mount point,
 * and later propagates its unmount to them too.
 */
async function moveStaged(ns: Namespace, made: readonly MadeMount[]): Promise<void> {
  for (const m of made) {
    if (!m.staged) continue;
    const result = await run(ns, ['mount', '--no-canonicalize', '--move', procPathOf(m.fd), procPathOf(m.staged.target)]);
    const there = openChild(m.parent.fd, m.name, false, m.request.rootfs, m.request.path);
    const moved = there !== null && mountIdOf(there) === mountIdOf(m.fd);
    if (there !== null) closeSync(there);
    if (!moved) throw commandFailed('ERR_MOUNT_FAILED', describeMount(m.request), result, procPathOf(m.staged.target));
  }
}


function describeMount(request: MountRequest): string {
  return `mounting volume ${request.source} at ${request.path} in rootfs ${request.rootfs}`;
}

/** Undoes mounts made by a failed `mountAll`, children first, through the descriptors on the mounts themselves. */
async function detachMade(ns: Namespace, made: readonly MadeMount[]): Promise<void> {
  await detach(ns, [...made].reverse().map((m) => ({ target: m.request, fd: m.fd })));
}

/**
 * The topmost mount at a target, opened through its parent without following a
 * symlink; null when nothing can be there: we never mount through a symlink or a
 * non-directory, nor where a path is missing.
 */
function openMountPoint(ns: Namespace, target: MountTarget): number | null {
  let parent: PinnedDirectory | null;
  try {
    parent = openInRootfs(target.rootfs, path.posix.dirname(target.path), { follow: false, fsRoot: ns.fsRoot });
    if (parent === null) return null;
  } catch (error) {
    if (isNothingThere(error)) return null;
    throw error;
  }
  try {
    return openChild(parent.fd, path.posix.basename(target.path), false, target.rootfs, target.path);
  } catch (error) {
    if (isNothingThere(error)) return null;
    throw error;
  } finally {
    parent.close();
  }
}

function isNothingThere(error: unknown): boolean {
  return (
    error instanceof ContainerVolumesError &&
    (error.code === 'ERR_MOUNT_POINT_NOT_DIRECTORY' || error.code === 'ERR_PATH_ESCAPES_ROOTFS')
  );
}

/**
 * Lazily unmounts (MNT_DETACH) the mounts the descriptors are on, in the order given,
 * in one `umount`; one with nothing mounted is success. Lazy, because our own
 * descriptors keep the mounts busy, and a process still holding files in a volume
 * keeps them, as with Docker.
 */
async function detach(ns: Namespace, open: readonly { target: MountTarget; fd: number }[]): Promise<void> {
  if (open.length === 0) return;
  const result = await run(ns, ['umount', '--no-canonicalize', '--lazy', ...open.map((o) => procPathOf(o.fd))]);
  if (result.exitCode === 0) return;
  for (const { target, fd } of open) {
    const said = linesAbout(result.stderr, procPathOf(fd));
    if (said.length > 0 && !said.every((line) => NOTHING_MOUNTED.test(line))) {
      throw commandFailed('ERR_UNMOUNT_FAILED', `unmounting ${target.path} in rootfs ${target.rootfs}`, result, procPathOf(fd));
    }
  }
  debugMount('umount exited %d: %s', result.exitCode, result.stderr);
}


import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError, isErrnoException } from '../../errors.js';
import { debugMount } from '../../debug.js';
import { openInRootfs, procPathOf, type PinnedDirectory } from '../../rootfs/open-in-rootfs.js';
import { isBelow } from '../../rules/volume-path.js';
import type { MountRequest, MountTarget } from '../mounter.js';
import { parseMountinfo } from '../mountinfo.js';
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  MNT_DETACH,
  MOUNT_ATTR__ATIME,
  MOUNT_ATTR_IDMAP,
  MOUNT_ATTR_NODEV,
  MOUNT_ATTR_NODIRATIME,
  MOUNT_ATTR_NOEXEC,
  MOUNT_ATTR_NOSUID,
  MOUNT_ATTR_NOSYMFOLLOW,
  MOUNT_ATTR_RDONLY,
  MOUNT_ATTR_RELATIME,
  MOVE_MOUNT_F_EMPTY_PATH,
  MOVE_MOUNT_T_EMPTY_PATH,
  MS_PRIVATE,
  O_CLOEXEC,
  O_DIRECTORY,
  O_PATH,
  OPEN_TREE_CLOEXEC,
  OPEN_TREE_CLONE,
  RESOLVE_IN_ROOT,
  RESOLVE_NO_MAGICLINKS,
  RESOLVE_NO_SYMLINKS,
  ST_NODEV,
  ST_NOSUID,
  ST_RDONLY,
  STATX_ATTR_MOUNT_ROOT,
  STATX_INO,
  STATX_MNT_ID,
} from './constants.js';
import type { KernelCalls, MountAttr, StatxResult } from './syscalls.js';
import { UserNamespaces } from './user-namespace.js';

export const OPEN_DIRECTORY = O_PATH | O_DIRECTORY | O_CLOEXEC;
/**
 * The paths given are where the volumes land, their symlinks followed already
 * (BindMounter lands them first): the kernel resolves them with the rootfs as `/` and
 * follows no link, so one met now was swapped in since and fails (ELOOP) rather than
 * leading elsewhere.
 */
export const IN_ROOTFS = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
/** Inside a detached volume, where nothing was landed beforehand: links followed, clamped to the volume. */
const IN_VOLUME = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
/** openat2 says EAGAIN when a rename raced a lookup with `..`: it is tried again, this many times. */
export const RESOLVE_ATTEMPTS = 16;

/** A directory's identity: the mount it is seen through, and its device and inode. */
export type Identity = string;

/** A mount this call attached: its detached tree's descriptor names it wherever it is now. */
interface Attached {
  request: MountRequest;
  tree: number;
}

/**
 * Bind mounts through the kernel's mount API, in the calling process's mount namespace.
 *
 * Per volume: `open_tree(OPEN_TREE_CLONE)` copies the volume directory into a detached
 * mount; `mount_setattr` makes it nosuid, nodev, read-only if asked and private while
 * nobody can see it yet; `move_mount` attaches it onto a descriptor of the mount point,
 * found by `openat2(RESOLVE_IN_ROOT)` from a descriptor of the rootfs. So the mount has
 * its options from its first instant, lands on exactly the directory that was resolved,
 * and no path is looked up twice. On a shared rootfs the peers get the mount as it is,
 * read-only included: nothing needs staging. Then the mount point is opened again and
 * must be that mount (its id, from statx), with those flags (from fstatvfs).
 */
export class KernelEngine {
  constructor(private readonly calls: KernelCalls) {}

  async mountAll(requests: readonly MountRequest[]): Promise<void> {
    const session = new Session(this.calls);
    const attached: Attached[] = [];
    let userNamespaces: UserNamespaces | undefined;
    try {
      userNamespaces = await UserNamespaces.open(requests, (i) => describeMount(requests[i] as MountRequest));
      // A non-directory or a loop on any path is refused before anything is made.
      requests.forEach((request, i) => {
        if (parentOf(requests, i) !== undefined) return;
        const fd = session.resolve(request, false, describeMount(request));
        if (fd !== null) this.calls.close(fd);
      });
      const seen = new Set<Identity>();
      for (const [i, request] of requests.entries()) {
        const nested = requests.filter((_, j) => j > i && parentOf(requests, j) === i);
        this.attach(session, request, nested, seen, attached, userNamespaces.of(request));
      }
    } catch (error) {
      await this.detachAll(attached.reverse()).catch((e: Error) => debugMount('rollback failed: %s', e.message));
      throw error;
    } finally {
      for (const a of attached) this.calls.close(a.tree);
      userNamespaces?.close();
      session.close();
    }
  }

  async unmountAll(targets: readonly MountTarget[]): Promise<void> {
    const session = new Session(this.calls);
    const open: { target: MountTarget; fd: number }[] = [];
    try {
      // Pinned before any is detached: a path changed meanwhile can no longer redirect one.
      for (const target of targets) {
        const fd = session.mountAt(target);
        if (fd !== null) open.push({ target, fd });
      }
      for (const wave of childrenFirst(open)) {
        const results = await Promise.allSettled(wave.map(({ fd }) => this.detach(fd)));
        const failed = results.findIndex((r) => r.status === 'rejected');
        if (failed === -1) continue;
        const { target } = wave[failed] as { target: MountTarget };
        const error = (results[failed] as PromiseRejectedResult).reason as Error;
        throw new ContainerVolumesError('ERR_UNMOUNT_FAILED', `unmounting ${target.path} in rootfs ${target.rootfs} failed: ${error.message}`, { cause: error });
      }
    } finally {
      for (const { fd } of open) this.calls.close(fd);
      session.close();
    }
  }

  /**
   * Makes one mount, after the mount points of `nested` inside it, and adds it to
   * `attached` the moment it is attached, so that a failed check undoes it too.
   * `userns` is the user namespace to idmap it with, for a request with a mapping.
   */
  private attach(
    session: Session,
    request: MountRequest,
    nested: readonly MountRequest[],
    seen: Set<Identity>,
    attached: Attached[],
    userns: number | undefined,
  ): void {
    const what = describeMount(request);
    const calls = this.calls;
    const tree = detachedCopy(calls, request, nested.map((child) => path.posix.relative(request.path, child.path)), userns, what);
    let target: number | undefined;
    try {
      target = session.resolve(request, true, what) as number;
      const identity = session.identityOf(target);
      // Landing refuses two paths to one directory by name; a bind mount inside the rootfs can still make two names one.
      if (seen.has(identity)) {
        throw new ContainerVolumesError('ERR_DUPLICATE_MOUNT_POINT', `${what} refused: ${request.path} resolves to the mount point of another volume of the same container`);
      }
      calls.moveMount(tree, '', target, '', MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
    } catch (error) {
      calls.close(tree);
      throw mountFailed(error, what);
    } finally {
      if (target !== undefined) calls.close(target);
    }
    attached.push({ request, tree });
    seen.add(this.verify(session, request, tree, what));
  }

  /**
   * Opens the mount point again, through the rootfs as a process in the container would:
   * it must now be the root of the mount just attached, with the flags asked for.
   * Returns the identity of the new mount point, as a later volume would resolve it.
   */
  private verify(session: Session, request: MountRequest, tree: number, what: string): Identity {
    const calls = this.calls;
    const mountId = calls.statx(tree, '', AT_EMPTY_PATH, STATX_MNT_ID).mountId;
    const there = session.resolve(request, false, what);
    if (there === null) throw changed(request, what);
    try {
      const seen = calls.statx(there, '', AT_EMPTY_PATH, STATX_MNT_ID | STATX_INO);
      if (seen.mountId !== mountId || (seen.attributes & STATX_ATTR_MOUNT_ROOT) === 0) throw changed(request, what);
      const identity = identityOf(seen);
      checkOptions(calls.mountFlags(there), mountId, '/proc/self/mountinfo', request, what);
      return identity;
    } finally {
      calls.close(there);
    }
  }

  /** Detaches, children first, what a failed call attached: by its tree's descriptor, wherever it is now. */
  private async detachAll(attached: readonly Attached[]): Promise<void> {
    for (const { tree } of attached) await this.detach(tree);
  }

  /**
   * Lazily unmounts (MNT_DETACH) the mount whose root `fd` is: through its
   * `/proc/<pid>/fd` link, which names that very mount, not whatever a path leads to
   * now. Lazy, as a process still holding files in a volume keeps them, as with Docker.
   * One already gone (EINVAL: not a mount) is success.
   */
  private async detach(fd: number): Promise<void> {
    try {
      await this.calls.umount2(procPathOf(fd), MNT_DETACH);
    } catch (error) {
      if (!isErrnoException(error, 'EINVAL')) throw error;
    }
  }
}

/**
 * What a mount lacks of what its request asks: `nosuid`, `nodev` and its mode, from the
 * fstatvfs `flags` of the mount `mountId`; `idmapped`, which no flag tells, from its
 * line in `mountinfo` (the file of a process that sees it).
 */
export function missingOptions(flags: number, mountId: number, mountinfo: string, request: Pick<MountRequest, 'mode' | 'idmap'>): string[] {
  const wanted: [number, string][] = [[ST_NOSUID, 'nosuid'], [ST_NODEV, 'nodev']];
  const missing = wanted.filter(([flag]) => (flags & flag) === 0).map(([, name]) => name);
  if (((flags & ST_RDONLY) !== 0) !== (request.mode === 'ro')) missing.push(request.mode);
  if (request.idmap && !parseMountinfo(readFileSync(mountinfo, 'utf8')).find((m) => m.id === mountId)?.options.includes('idmapped')) missing.push('idmapped');
  return missing;
}

/** ERR_MOUNT_FAILED unless a new mount shows everything its request asks (see `missingOptions`). */
export function checkOptions(flags: number, mountId: number, mountinfo: string, request: Pick<MountRequest, 'mode' | 'idmap'>, what: string): void {
  const missing = missingOptions(flags, mountId, mountinfo, request);
  if (missing.length > 0) {
    throw new ContainerVolumesError('ERR_MOUNT_FAILED', `${what}: the mount does not show ${missing.join(',')} in effect (fstatvfs flags ${flags.toString(16)})`);
  }
}

/** The mount's options: those util-linux's `remount,bind,nosuid,nodev,<mode>` gives, and private; idmapped with `userns` when given. */
function attributesFor(request: Pick<MountRequest, 'mode'>, userns?: number): MountAttr {
  const ro = request.mode === 'ro';
  return {
    attrSet: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_RELATIME | (ro ? MOUNT_ATTR_RDONLY : 0) | (userns === undefined ? 0 : MOUNT_ATTR_IDMAP),
    attrClr: MOUNT_ATTR__ATIME | MOUNT_ATTR_NODIRATIME | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOSYMFOLLOW | (ro ? 0 : MOUNT_ATTR_RDONLY),
    propagation: MS_PRIVATE,
    ...(userns === undefined ? {} : { usernsFd: userns }),
  };
}

/**
 * The first half of every mount: a detached copy of the volume (`open_tree`), with the
 * mount points of the volumes nested in it (`nested`, relative paths) made while it is
 * still writable and seen by nobody, so that a read-only volume can hold them, and
 * before it is idmapped, since root of this namespace cannot create through a mapping
 * that has no id for it; then its options, read-only included, before anyone can see
 * it. The caller owns the descriptor.
 */
export function detachedCopy(calls: KernelCalls, request: Pick<MountRequest, 'mode' | 'source'>, nested: readonly string[], userns: number | undefined, what: string): number {
  let tree: number;
  try {
    tree = calls.openTree(AT_FDCWD, request.source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  } catch (error) {
    throw new ContainerVolumesError('ERR_MOUNT_FAILED', `${what} failed: the volume directory cannot be opened (${(error as Error).message})`, { cause: error });
  }
  try {
    for (const relative of nested) makeDirectories(calls, tree, relative);
    setAttributes(calls, tree, request, userns, what);
    return tree;
  } catch (error) {
    calls.close(tree);
    throw mountFailed(error, what);
  }
}

/** A failure of the mount pipeline as a coded error: ours as thrown, any other as ERR_MOUNT_FAILED. */
export function mountFailed(error: unknown, what: string): ContainerVolumesError {
  if (error instanceof ContainerVolumesError) return error;
  return new ContainerVolumesError('ERR_MOUNT_FAILED', `${what} failed: ${(error as Error).message}`, { cause: error });
}

/** Sets a detached mount's options (`attributesFor`) before anyone sees it; a file system that cannot be idmapped is ERR_IDMAP_UNSUPPORTED. */
function setAttributes(calls: KernelCalls, tree: number, request: Pick<MountRequest, 'mode' | 'source'>, userns: number | undefined, what: string): void {
  try {
    calls.mountSetattr(tree, '', AT_EMPTY_PATH, attributesFor(request, userns));
  } catch (error) {
    if (userns !== undefined && isErrnoException(error, 'EINVAL')) throw idmapRefused(calls, request, what, error);
    throw error;
  }
}

/**
 * The kernel says EINVAL to MOUNT_ATTR_IDMAP on a detached mount when the file system
 * does not support idmapped mounts (ramfs, NFS, …): the error names the file system type,
 * read from the mount that holds the volume directory.
 */
function idmapRefused(calls: KernelCalls, request: Pick<MountRequest, 'source'>, what: string, error: unknown): ContainerVolumesError {
  let fsType = 'its file system';
  try {
    const { mountId } = calls.statx(AT_FDCWD, request.source, 0, STATX_MNT_ID);
    const type = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8')).find((m) => m.id === mountId)?.fsType;
    if (type) fsType = `its file system, ${type},`;
  } catch {
    // The type only makes the message clearer.
  }
  return new ContainerVolumesError(
    'ERR_IDMAP_UNSUPPORTED',
    `${what} refused: the volume cannot be mounted idmapped, ${fsType} does not support idmapped mounts (mount_setattr: ${(error as Error).message})`,
    { cause: error },
  );
}

/**
 * Splits targets, given children first, into waves to detach together: a target waits
 * for the waves holding the targets below it. Each detach is a trip to a worker thread,
 * so a flat container costs one trip, not one per volume.
 */
function childrenFirst<T extends { target: MountTarget }>(open: readonly T[]): T[][] {
  const waves: T[][] = [];
  const waveOf: number[] = [];
  open.forEach(({ target }, i) => {
    let wave = 0;
    for (let j = 0; j < i; j++) {
      const earlier = (open[j] as T).target;
      if (earlier.rootfs === target.rootfs && isBelow(earlier.path, target.path)) wave = Math.max(wave, (waveOf[j] as number) + 1);
    }
    waveOf.push(wave);
    (waves[wave] ??= []).push(open[i] as T);
  });
  return waves;
}

/**
 * The index of the request `i` is nested in: the nearest earlier one of the same rootfs
 * whose path contains it (requests come parents first). Its mount point is made in
 * that volume.
 */
function parentOf(requests: readonly MountRequest[], i: number): number | undefined {
  const request = requests[i] as MountRequest;
  let found: number | undefined;
  for (let j = 0; j < i; j++) {
    const earlier = requests[j] as MountRequest;
    if (earlier.rootfs !== request.rootfs || !isBelow(request.path, earlier.path)) continue;
    if (found === undefined || earlier.path.length > (requests[found] as MountRequest).path.length) found = j;
  }
  return found;
}

/**
 * Makes the missing directories of `relative` below the directory `root` (a detached
 * volume), each with mkdirat in its resolved parent, symlinks resolved inside `root`.
 * Best effort: whatever stops it (a file in the way, a dangling link) is met again, and
 * reported, when the mount point is resolved from the rootfs.
 */
function makeDirectories(calls: KernelCalls, root: number, relative: string): void {
  const names = relative.split('/');
  for (let i = 0; i < names.length; i++) {
    let parent: number;
    try {
      parent = calls.openat2(root, names.slice(0, i).join('/') || '.', OPEN_DIRECTORY, IN_VOLUME);
    } catch {
      return;
    }
    try {
      calls.mkdirat(parent, names[i] as string, 0o755);
    } catch (error) {
      if (!isErrnoException(error, 'EEXIST')) return;
    } finally {
      calls.close(parent);
    }
  }
}

/** The descriptors of one call: each rootfs opened once, every one closed at the end. */
class Session {
  private readonly rootfsDirs = new Map<string, PinnedDirectory>();

  constructor(private readonly calls: KernelCalls) {}

  /** The rootfs, opened from `/` without following a symlink (ERR_INVALID_ROOTFS otherwise). */
  rootfs(rootfs: string): number {
    let dir = this.rootfsDirs.get(rootfs);
    if (dir === undefined) {
      // The container path `/` has nothing to create: this only opens the rootfs.
      dir = openInRootfs(rootfs, '/', { create: true });
      this.rootfsDirs.set(rootfs, dir);
    }
    return dir.fd;
  }

  identityOf(fd: number): Identity {
    return identityOf(this.calls.statx(fd, '', AT_EMPTY_PATH, STATX_MNT_ID | STATX_INO));
  }

  /**
   * The directory at the request's (landed) path inside its rootfs, following no link,
   * as an O_PATH descriptor; `create` makes what is missing, else null.
   */
  resolve(request: MountTarget, create: boolean, what: string): number | null {
    const root = this.rootfs(request.rootfs);
    for (let attempt = 0; attempt < RESOLVE_ATTEMPTS; attempt++) {
      try {
        return this.calls.openat2(root, request.path, OPEN_DIRECTORY, IN_ROOTFS);
      } catch (error) {
        if (isErrnoException(error, 'EAGAIN')) continue;
        if (!isErrnoException(error, 'ENOENT')) throw resolveFailed(error, request, what);
        if (!create) return null;
        if (attempt > 0) break;
      }
      // Missing directories are made by the rootfs walker, following no link either.
      try {
        openInRootfs(request.rootfs, request.path, { create: true, follow: false }).close();
      } catch (error) {
        if (error instanceof ContainerVolumesError) {
          throw new ContainerVolumesError(error.code, `cannot mount a volume at ${request.path}: ${error.message}`, { cause: error });
        }
        throw error;
      }
    }
    throw changed(request, what);
  }

  /**
   * The topmost mount at a target, pinned by a descriptor; null when nothing of ours can
   * be there: a missing path, a non-directory or a symlink on the way (we never mount
   * through one), a directory that is no mount's root.
   */
  mountAt(target: MountTarget): number | null {
    let fd: number | null;
    try {
      fd = this.resolve(target, false, `unmounting ${target.path} in rootfs ${target.rootfs}`);
    } catch (error) {
      const code = (error as ContainerVolumesError).code;
      if (code === 'ERR_MOUNT_POINT_NOT_DIRECTORY' || code === 'ERR_PATH_ESCAPES_ROOTFS') return null;
      throw error;
    }
    if (fd === null) return null;
    if ((this.calls.statx(fd, '', AT_EMPTY_PATH, STATX_MNT_ID).attributes & STATX_ATTR_MOUNT_ROOT) !== 0) return fd;
    this.calls.close(fd);
    return null;
  }

  close(): void {
    for (const dir of this.rootfsDirs.values()) dir.close();
    this.rootfsDirs.clear();
  }
}

export function identityOf({ mountId, dev, ino }: StatxResult): Identity {
  return `${mountId} ${dev} ${ino}`;
}

export function resolveFailed(error: unknown, target: MountTarget, what: string): unknown {
  if (isErrnoException(error, 'ENOTDIR')) {
    return new ContainerVolumesError('ERR_MOUNT_POINT_NOT_DIRECTORY', `${what}: cannot use ${target.path} in rootfs ${target.rootfs}: something on it is not a directory`, {
      cause: error,
    });
  }
  if (isErrnoException(error, 'ELOOP')) {
    return new ContainerVolumesError('ERR_PATH_ESCAPES_ROOTFS', `${what} refused: a symlink was swapped in on ${target.path} in rootfs ${target.rootfs}`, {
      cause: error,
    });
  }
  return new ContainerVolumesError('ERR_MOUNT_FAILED', `${what} failed: ${(error as Error).message}`, { cause: error });
}

export function changed(target: MountTarget, what: string): ContainerVolumesError {
  return new ContainerVolumesError('ERR_PATH_ESCAPES_ROOTFS', `${what} refused: ${target.path} changed while it was being mounted`);
}

function describeMount(request: MountRequest): string {
  return `mounting volume ${request.source} at ${request.path} in rootfs ${request.rootfs}`;
}

import fs from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError, isErrnoException } from '../errors.js';

/** O_PATH is not in fs.constants; this value holds on x86-64 and arm64. */
const O_PATH = 0o10000000;
/** With O_DIRECTORY, O_NOFOLLOW makes a symlink fail (ENOTDIR) instead of being followed. */
const OPEN_DIR = O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;

/** O_PATH, for opening a directory only to name it, as a mount source or target. */
export const O_PATH_DIRECTORY = O_PATH | fs.constants.O_DIRECTORY;

/** A directory pinned by an O_PATH file descriptor. */
export interface PinnedDirectory {
  fd: number;
  /** The real host path of the directory, read back from the kernel after opening it. */
  hostPath: string;
  /** A path naming this very directory for another process: `/proc/<our pid>/fd/<fd>`. */
  procPath: string;
  close(): void;
}

/**
 * The kernel's limit on symlinks followed in one lookup (MAXSYMLINKS,
 * include/linux/namei.h): more is a loop, or a chain nobody meant.
 */
const MAX_SYMLINKS = 40;

/** How `openInRootfs` walks. */
export interface WalkOptions {
  /** Make missing directories (0755) instead of stopping at the first one missing. */
  create?: boolean;
  /**
   * Follow symlinks inside the rootfs (default). Without it a symlink on the way is
   * ERR_PATH_ESCAPES_ROOTFS: the mounters walk a path that was resolved already, and a
   * link found there now was swapped in since.
   */
  follow?: boolean;
  /** Where the host's `/` is: `/proc/<pid>/root` walks the file system as another mount namespace sees it. */
  fsRoot?: string;
}

/**
 * Opens the directory at `containerPath` inside `rootfs` (`/` is the rootfs itself).
 * Returns null when a component is missing and `create` is not set.
 *
 * The path is resolved as the container will see it, the way Docker, Podman and runc
 * resolve a mount destination: symlinks in the rootfs are followed, but an absolute link
 * target starts again from the rootfs and `..` never climbs above it (a link
 * `/srv -> /data` means `<rootfs>/data`, never the host's `/data`). The rootfs's own
 * host path follows no symlink (ERR_INVALID_ROOTFS), so a rootfs replaced by a symlink
 * after `create` cannot steer a mount onto the host.
 *
 * Each step opens `/proc/self/fd/<parent>/<name>` with O_NOFOLLOW, and a symlink is read
 * and its target walked the same way from the rootfs or the current directory, so a
 * component swapped for a symlink after it was checked can only redirect the walk to
 * another place inside the rootfs (the CVE-2021-30465 class of race).
 *
 * The calls are synchronous on purpose: the walk juggles raw descriptors, and each
 * step is a single local system call.
 */
export function openInRootfs(rootfs: string, containerPath: string, options: WalkOptions & { create: true }): PinnedDirectory;
export function openInRootfs(rootfs: string, containerPath: string, options?: WalkOptions): PinnedDirectory | null;
export function openInRootfs(rootfs: string, containerPath: string, options: WalkOptions = {}): PinnedDirectory | null {
  const walked = walkInRootfs(rootfs, containerPath, options);
  if (walked.missing.length > 0) {
    fs.closeSync(walked.fd);
    return null;
  }
  return pin(walked.fd, walked.rootHostPath, rootfs, containerPath);
}

/**
 * Where `containerPath` lands inside `rootfs` once its symlinks are followed there: a
 * clean container path, `/` when it is the rootfs itself. What does not exist yet is
 * appended as given, `..` clamped at the root. Creates nothing.
 */
export function landingPath(rootfs: string, containerPath: string): string {
  if (!containerPath.split('/').includes('..') && landsAsWritten(rootfs, containerPath)) return containerPath;
  const walked = walkInRootfs(rootfs, containerPath, {});
  fs.closeSync(walked.fd);
  return path.posix.resolve('/', ...walked.names, ...walked.missing);
}

/**
 * Where `containerPath` lands in the root directory of another process (`fsRoot`,
 * `/proc/<pid>/root` or a descriptor of it), as a process there sees it: its mounts
 * crossed, its symlinks followed but clamped to that root, `..` never above it.
 */
export function landingPathIn(fsRoot: string, containerPath: string): string {
  const walked = walkInRootfs('/', containerPath, { fsRoot });
  fs.closeSync(walked.fd);
  return path.posix.resolve('/', ...walked.names, ...walked.missing);
}

/**
 * Whether nothing on the way is a symlink, the common case, for a `realpath` or a few
 * instead of a walk: the part of the path that exists resolves to itself (what does
 * not exist yet cannot be a link). A link swapped in just after is refused by the
 * mounters, which follow none.
 */
function landsAsWritten(rootfs: string, containerPath: string): boolean {
  for (let p = containerPath, below: string | undefined; ; below = p, p = path.posix.dirname(p)) {
    const lexical = path.resolve(rootfs, `.${p}`);
    try {
      if (fs.realpathSync.native(lexical) !== lexical) return false;
      // The first part that does not resolve must be missing, not a dangling link to follow.
      return below === undefined || fs.lstatSync(path.join(rootfs, below), { throwIfNoEntry: false }) === undefined;
    } catch (error) {
      // Only a missing part is looked past; a loop or a file on the way is the walk's to name.
      if (!isErrnoException(error, 'ENOENT') || p === '/') return false;
    }
  }
}

interface Walked {
  /** The deepest directory reached. */
  fd: number;
  rootHostPath: string;
  /**
   * The names walked through from the rootfs to `fd`, links followed: where the path
   * lands, as the walk itself found it (a deleted or covered directory reads back
   * differently through /proc).
   */
  names: string[];
  /** The components left when one was missing (and not created): empty when the whole path was found. */
  missing: string[];
}

function walkInRootfs(rootfs: string, containerPath: string, { create = false, follow = true, fsRoot = '/' }: WalkOptions): Walked {
  if (containerPath.split('/').includes('..')) {
    throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${JSON.stringify(containerPath)}: must not contain '..' segments`);
  }
  // The directories walked through, the rootfs first: `..` goes back one, never past the rootfs.
  const stack = [openRootfs(rootfs, fsRoot)];
  const names: string[] = [];
  const root = stack[0] as number;
  const rootHostPath = hostPathOf(root);
  const pending = components(containerPath);
  let links = 0;
  try {
    for (let name = pending.shift(); name !== undefined; name = pending.shift()) {
      if (name === '..') {
        if (stack.length > 1) fs.closeSync(stack.pop() as number);
        names.splice(stack.length - 1);
        continue;
      }
      const step = openStep(stack[stack.length - 1] as number, name, create, follow, rootfs, containerPath);
      if (step === null) return { fd: stack.pop() as number, rootHostPath, names, missing: [name, ...pending] };
      if (typeof step === 'number') {
        stack.push(step);
        names.push(name);
        continue;
      }
      if (++links > MAX_SYMLINKS) {
        throw new ContainerVolumesError(
          'ERR_PATH_ESCAPES_ROOTFS',
          `refusing ${containerPath} in rootfs ${rootfs}: more than ${MAX_SYMLINKS} symlinks on the way (a loop?)`,
        );
      }
      if (step.link.startsWith('/')) {
        while (stack.length > 1) fs.closeSync(stack.pop() as number);
        names.length = 0;
      }
      pending.unshift(...components(step.link));
    }
    return { fd: stack.pop() as number, rootHostPath, names, missing: [] };
  } finally {
    for (const fd of stack) fs.closeSync(fd);
  }
}

/** How many times a name that keeps changing between directory and symlink is looked at again. */
const RELOOKS = 64;

/**
 * Opens (or creates) `name` in `dirFd` as a directory, or reads it as a symlink to
 * follow; null when missing and not created. A name swapped between the two looks
 * (opened as a link, read as a directory) is looked at again: whatever it is then is
 * followed, still inside the rootfs.
 */
function openStep(dirFd: number, name: string, create: boolean, follow: boolean, rootfs: string, containerPath: string): number | { link: string } | null {
  const child = `/proc/self/fd/${dirFd}/${name}`;
  for (let look = 1; ; look++) {
    try {
      return openChild(dirFd, name, create, rootfs, containerPath);
    } catch (error) {
      if (!follow || !(error instanceof ContainerVolumesError) || error.code !== 'ERR_PATH_ESCAPES_ROOTFS') throw error;
      try {
        return { link: fs.readlinkSync(child) };
      } catch {
        if (look === RELOOKS) throw error;
      }
    }
  }
}

/**
 * Opens (creating) the directory `relative` below the directory `dirFd`, one component
 * at a time and following no symlink, as `openInRootfs` does below a rootfs; for a
 * mount point inside a volume that is not yet in its place.
 */
export function openBelow(dirFd: number, relative: string, rootfs: string, containerPath: string): number {
  let fd = fs.openSync(`/proc/self/fd/${dirFd}`, O_PATH_DIRECTORY);
  try {
    for (const name of components(relative)) {
      const next = openChild(fd, name, true, rootfs, containerPath) as number;
      fs.closeSync(fd);
      fd = next;
    }
    return fd;
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
}

/**
 * Opens `name` inside the directory `dirFd`, without following a symlink; null when it
 * is missing and `create` is false.
 */
export function openChild(dirFd: number, name: string, create: boolean, rootfs: string, containerPath: string): number | null {
  const child = `/proc/self/fd/${dirFd}/${name}`;
  try {
    return fs.openSync(child, OPEN_DIR);
  } catch (error) {
    if (!isErrnoException(error, 'ENOENT')) throw notADirectory(error, child, rootfs, containerPath, name);
    if (!create) return null;
  }
  try {
    fs.mkdirSync(child, 0o755);
    return fs.openSync(child, OPEN_DIR);
  } catch (error) {
    // Made by someone else between our open and our mkdir: open whatever is there now.
    const raced = isErrnoException(error, 'EEXIST') ? openChild(dirFd, name, false, rootfs, containerPath) : null;
    if (raced !== null) return raced;
    // Gone again between our mkdir and our open (or its parent was removed): something is racing us.
    if (isErrnoException(error, 'ENOENT') || isErrnoException(error, 'EEXIST')) {
      throw new ContainerVolumesError(
        'ERR_PATH_ESCAPES_ROOTFS',
        `refusing ${containerPath} in rootfs ${rootfs}: ${name} changed while it was being resolved`,
        { cause: error },
      );
    }
    if (isErrnoException(error, 'EROFS')) {
      throw new ContainerVolumesError(
        'ERR_MOUNT_POINT_READ_ONLY',
        `cannot create ${containerPath} in rootfs ${rootfs}: ${name} would be made on a read-only mount`,
        { cause: error },
      );
    }
    throw notADirectory(error, child, rootfs, containerPath, name);
  }
}

function notADirectory(error: unknown, child: string, rootfs: string, containerPath: string, name: string): unknown {
  if (!isErrnoException(error, 'ENOTDIR')) return error;
  const now = (() => {
    try {
      return fs.lstatSync(child);
    } catch {
      return null;
    }
  })();
  if (now !== null && !now.isSymbolicLink() && !now.isDirectory()) {
    return new ContainerVolumesError('ERR_MOUNT_POINT_NOT_DIRECTORY', `cannot use ${containerPath} in rootfs ${rootfs}: ${name} is not a directory`);
  }
  // A symlink, or a directory (or nothing) by now: it was a symlink when we opened it, swapped since.
  const why = now?.isSymbolicLink() ? 'is a symlink, not followed here' : 'changed while it was being resolved';
  return new ContainerVolumesError('ERR_PATH_ESCAPES_ROOTFS', `refusing ${containerPath} in rootfs ${rootfs}: ${name} ${why}`);
}

/**
 * Opens the rootfs itself by walking its host path from `fsRoot`, following no symlink.
 * `fsRoot` is `/`, or `/proc/<pid>/root` to walk the file system as another mount
 * namespace sees it.
 */
function openRootfs(rootfs: string, fsRoot: string): number {
  const invalid = (why: string, cause?: unknown) =>
    new ContainerVolumesError('ERR_INVALID_ROOTFS', `rootfs ${rootfs} cannot be used: ${why}`, { cause });
  const names = components(rootfs);
  // `/` is the host's own root, never a rootfs; below another process's root it is that root.
  if (!rootfs.startsWith('/') || (names.length === 0 && fsRoot === '/')) throw invalid('it must be an absolute path other than /');
  // The one link followed: `/proc/<pid>/root` is the way into another mount namespace.
  let fd = fs.openSync(fsRoot, O_PATH_DIRECTORY);
  try {
    for (const name of names) {
      let next: number;
      try {
        next = fs.openSync(`/proc/self/fd/${fd}/${name}`, OPEN_DIR);
      } catch (error) {
        const why = isErrnoException(error, 'ENOTDIR') ? `${name} is not a directory (symlinks are not followed)` : (error as Error).message;
        throw invalid(why, error);
      }
      fs.closeSync(fd);
      fd = next;
    }
    return fd;
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

export function hostPathOf(fd: number): string {
  return fs.readlinkSync(`/proc/self/fd/${fd}`);
}

/** Belt and braces: the kernel must agree that the directory is the rootfs or inside it. */
function pin(fd: number, rootHostPath: string, rootfs: string, containerPath: string): PinnedDirectory {
  const hostPath = hostPathOf(fd);
  if (hostPath !== rootHostPath && rootHostPath !== '/' && !hostPath.startsWith(`${rootHostPath}/`)) {
    fs.closeSync(fd);
    throw new ContainerVolumesError(
      'ERR_PATH_ESCAPES_ROOTFS',
      `refusing ${containerPath} in rootfs ${rootfs}: it resolves to ${hostPath}, outside the rootfs`,
    );
  }
  return { fd, hostPath, procPath: procPathOf(fd), close: () => fs.closeSync(fd) };
}

export function procPathOf(fd: number): string {
  return `/proc/${process.pid}/fd/${fd}`;
}

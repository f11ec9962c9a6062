import fs from 'node:fs';
import { ContainerVolumesError, isErrnoException } from '../errors.js';

/** O_PATH is not in fs.constants; this value holds on x86-64 and arm64. */
const O_PATH = 0o10000000;
const OPEN_DIR = O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;
/** The kernel's own limit on symlinks followed in one lookup. */
const MAX_SYMLINKS = 40;

/** A directory inside a rootfs, pinned by an O_PATH file descriptor. */
export interface RootfsDirectory {
  fd: number;
  /** The real host path of the directory, read back from the kernel after opening it. */
  hostPath: string;
  /** A path naming this very directory for another process: `/proc/<our pid>/fd/<fd>`. */
  procPath: string;
  close(): void;
}

/**
 * Opens the directory at `containerPath` inside `rootfs`, resolving symlinks as if
 * `rootfs` were `/` (like a chroot), with `create` making missing directories (0755).
 *
 * Every step goes through a file descriptor of the previous directory
 * (`/proc/self/fd/N/<name>`) opened with O_NOFOLLOW, so a component swapped for a
 * symlink after it was checked cannot redirect the walk out of the rootfs (the
 * CVE-2021-30465 class of race); the result is checked once more against the
 * kernel's own idea of where the descriptor points. Returns null when a component is
 * missing and `create` is false.
 *
 * The calls are synchronous on purpose: the walk juggles raw descriptors, and each
 * step is a single local system call.
 */
export function openInRootfs(rootfs: string, containerPath: string, create: true): RootfsDirectory;
export function openInRootfs(rootfs: string, containerPath: string, create: boolean): RootfsDirectory | null;
export function openInRootfs(rootfs: string, containerPath: string, create: boolean): RootfsDirectory | null {
  const rootReal = realRootfs(rootfs);
  const stack: number[] = [openDir(rootReal, rootfs, containerPath)];
  const closeAll = () => stack.splice(0).forEach((fd) => fs.closeSync(fd));
  try {
    const pending = containerPath.split('/').filter((c) => c !== '' && c !== '.');
    let symlinks = 0;
    while (pending.length > 0) {
      const name = pending.shift() as string;
      if (name === '..') {
        if (stack.length > 1) fs.closeSync(stack.pop() as number);
        continue;
      }
      const child = `/proc/self/fd/${stack[stack.length - 1]}/${name}`;
      const stat = lstatOrCreate(child, create);
      if (stat === null) {
        closeAll();
        return null;
      }
      if (stat.isSymbolicLink()) {
        if (++symlinks > MAX_SYMLINKS) throw escapes(rootfs, containerPath, 'too many levels of symbolic links');
        const target = fs.readlinkSync(child);
        if (target.startsWith('/')) stack.splice(1).forEach((fd) => fs.closeSync(fd));
        pending.unshift(...target.split('/').filter((c) => c !== '' && c !== '.'));
        continue;
      }
      if (!stat.isDirectory()) {
        throw new ContainerVolumesError(
          'ERR_MOUNT_POINT_NOT_DIRECTORY',
          `cannot use ${containerPath} in rootfs ${rootfs}: ${name} is not a directory`,
        );
      }
      stack.push(openDir(child, rootfs, containerPath));
    }
    const fd = stack.pop() as number;
    closeAll();
    return pinned(fd, rootReal, rootfs, containerPath);
  } catch (error) {
    closeAll();
    throw error;
  }
}

/** The rootfs's real path; the rootfs itself may be reached through host symlinks. */
export function realRootfs(rootfs: string): string {
  try {
    return fs.realpathSync(rootfs);
  } catch (error) {
    throw new ContainerVolumesError('ERR_INVALID_ROOTFS', `rootfs ${rootfs} cannot be opened: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

function lstatOrCreate(child: string, create: boolean): fs.Stats | null {
  try {
    return fs.lstatSync(child);
  } catch (error) {
    if (!isErrnoException(error, 'ENOENT')) throw error;
  }
  if (!create) return null;
  try {
    fs.mkdirSync(child, 0o755);
  } catch (error) {
    // Someone else made it between our lstat and mkdir: look at what is there now.
    if (!isErrnoException(error, 'EEXIST')) throw error;
  }
  return fs.lstatSync(child);
}

function openDir(dirPath: string, rootfs: string, containerPath: string): number {
  try {
    return fs.openSync(dirPath, OPEN_DIR);
  } catch (error) {
    // ELOOP/ENOTDIR here mean the directory we just checked was swapped for something else.
    if (isErrnoException(error, 'ELOOP') || isErrnoException(error, 'ENOTDIR')) {
      throw escapes(rootfs, containerPath, 'a directory on the path changed while it was being resolved');
    }
    throw error;
  }
}

function pinned(fd: number, rootReal: string, rootfs: string, containerPath: string): RootfsDirectory {
  const hostPath = fs.readlinkSync(`/proc/self/fd/${fd}`);
  if (!hostPath.startsWith(rootReal === '/' ? '/' : `${rootReal}/`) || hostPath === rootReal) {
    fs.closeSync(fd);
    throw escapes(rootfs, containerPath, `it resolves to ${hostPath}, which is not strictly inside the rootfs`);
  }
  return {
    fd,
    hostPath,
    procPath: `/proc/${process.pid}/fd/${fd}`,
    close: () => fs.closeSync(fd),
  };
}

function escapes(rootfs: string, containerPath: string, why: string): ContainerVolumesError {
  return new ContainerVolumesError(
    'ERR_PATH_ESCAPES_ROOTFS',
    `refusing ${containerPath} in rootfs ${rootfs}: ${why}`,
  );
}

import fs from 'node:fs/promises';
import { closeSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { ContainerVolumesError, MountCommandError, isErrnoException } from '../errors.js';
import { debugMount } from '../debug.js';
import { hostPathOf, openChild, openInRootfs, procPathOf } from '../rootfs/open-in-rootfs.js';
import { compareParentsFirst } from '../spec/volume-path.js';
import { checkListedDir, checkMountRequest, checkMountTarget } from './mount-target.js';
import type { MountedVolume, Mounter, MountRequest, MountTarget } from './mounter.js';
import { bindSource, readMountinfo } from './mountinfo.js';

/** `umount` says this (exit 32, in the C locale we run it in) when there is nothing to unmount. */
const NOTHING_MOUNTED = /not mounted|no mount point specified/;

/**
 * Linux bind mounts through util-linux's `mount` and `umount`, run by execa with
 * argument arrays. Needs root (CAP_SYS_ADMIN in the caller's mount namespace).
 *
 * A mount is two processes: the bind itself, then a remount that applies
 * `nosuid,nodev` and the mode and makes the mount private. Both address the target
 * as `/proc/<pid>/fd/<n>`, a descriptor opened inside the rootfs without following
 * symlinks, so no path string is re-resolved between the safety check and the mount.
 * The parent directory stays pinned by a descriptor throughout, and a mount point
 * cannot be renamed or removed, so the remount, the check and any rollback reach the
 * very mount that was made. The result is read back from /proc/self/mountinfo: a
 * mount whose options are not what was asked (a read-only remount that did not take)
 * is removed again and reported, never left writable.
 */
export class BindMounter implements Mounter {
  async mount(request: MountRequest): Promise<void> {
    checkMountRequest(request);
    const { source, rootfs, path: containerPath, mode } = request;
    const what = `mounting volume ${source} at ${containerPath} in rootfs ${rootfs}`;
    const parent = openInRootfs(rootfs, path.posix.dirname(containerPath), true);
    const name = path.posix.basename(containerPath);
    try {
      const target = openChild(parent.fd, name, true, rootfs, containerPath) as number;
      try {
        await run(['mount', '--no-canonicalize', '--bind', source, procPathOf(target)], 'ERR_MOUNT_FAILED', what);
      } finally {
        closeSync(target);
      }
      try {
        // The old descriptor names the directory now covered; opening the name again
        // through the pinned parent crosses into the new mount.
        const mounted = openChild(parent.fd, name, false, rootfs, containerPath);
        if (mounted === null) throw new ContainerVolumesError('ERR_MOUNT_FAILED', `${what}: the mount point vanished`);
        try {
          const options = `remount,bind,nosuid,nodev,${mode}`;
          await run(['mount', '--no-canonicalize', '-o', options, '--make-private', procPathOf(mounted)], 'ERR_MOUNT_FAILED', what);
          await verify(hostPathOf(mounted), ['nosuid', 'nodev', mode], what);
        } finally {
          closeSync(mounted);
        }
      } catch (error) {
        await detach(parent.fd, name, rootfs, containerPath).catch((e: Error) => debugMount('rollback of %s failed: %s', what, e.message));
        throw error;
      }
      debugMount('mounted %s at %s/%s (%s)', source, parent.hostPath, name, mode);
    } finally {
      parent.close();
    }
  }

  async unmount(target: MountTarget): Promise<void> {
    checkMountTarget(target);
    const { rootfs, path: containerPath } = target;
    let parent;
    try {
      parent = openInRootfs(rootfs, path.posix.dirname(containerPath), false);
    } catch (error) {
      // We never mount through a symlink or a non-directory: nothing of ours can be there.
      if (isNothingThere(error)) return;
      throw error;
    }
    if (parent === null) return;
    try {
      await detach(parent.fd, path.posix.basename(containerPath), rootfs, containerPath);
    } finally {
      parent.close();
    }
  }

  async list(dir: string): Promise<MountedVolume[]> {
    checkListedDir(dir);
    let real: string;
    try {
      real = await fs.realpath(dir);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return [];
      throw error;
    }
    const prefix = real === '/' ? '/' : `${real}/`;
    const all = await readMountinfo();
    const byPath = new Map<string, MountedVolume>();
    // Later lines are mounted on top of earlier ones at the same path: the last one wins.
    for (const entry of all) {
      if (!entry.mountPoint.startsWith(prefix)) continue;
      const mountPath = entry.mountPoint.slice(prefix.length - 1);
      const source = bindSource(entry, all, real);
      byPath.set(mountPath, { path: mountPath, mode: entry.options.includes('ro') ? 'ro' : 'rw', ...(source ? { source } : {}) });
    }
    return [...byPath.values()].sort((a, b) => compareParentsFirst(a.path, b.path));
  }
}

function isNothingThere(error: unknown): boolean {
  return (
    error instanceof ContainerVolumesError &&
    (error.code === 'ERR_MOUNT_POINT_NOT_DIRECTORY' || error.code === 'ERR_PATH_ESCAPES_ROOTFS')
  );
}

/**
 * Lazily unmounts (MNT_DETACH) the topmost mount at `name` in the pinned directory
 * `parentFd`; nothing mounted there is success. Lazy, because our own descriptor keeps
 * the mount busy, and a process still holding files in the volume keeps them, as with Docker.
 */
async function detach(parentFd: number, name: string, rootfs: string, containerPath: string): Promise<void> {
  let mounted: number | null;
  try {
    mounted = openChild(parentFd, name, false, rootfs, containerPath);
  } catch (error) {
    if (isNothingThere(error)) return;
    throw error;
  }
  if (mounted === null) return;
  try {
    await run(['umount', '--no-canonicalize', '--lazy', procPathOf(mounted)], 'ERR_UNMOUNT_FAILED', `unmounting ${containerPath} in rootfs ${rootfs}`);
    debugMount('unmounted %s in %s', containerPath, rootfs);
  } catch (error) {
    if (!(error instanceof MountCommandError && NOTHING_MOUNTED.test(error.stderr))) throw error;
  } finally {
    closeSync(mounted);
  }
}

async function run(command: string[], code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', what: string): Promise<void> {
  debugMount('run %o', command);
  try {
    await execa(command[0] as string, command.slice(1), { stdin: 'ignore', env: { LC_ALL: 'C' } });
  } catch (error) {
    const failed = error as { exitCode?: number; stderr?: string; message: string };
    throw new MountCommandError(code, `${what} failed`, { command, exitCode: failed.exitCode, stderr: failed.stderr || failed.message }, { cause: error });
  }
}

/** Reads the mount back: the options we asked for must be in effect on the topmost mount at `hostPath`. */
async function verify(hostPath: string, wanted: string[], what: string): Promise<void> {
  const top = (await readMountinfo()).filter((e) => e.mountPoint === hostPath).pop();
  const missing = wanted.filter((option) => !top?.options.includes(option));
  if (missing.length > 0) {
    throw new ContainerVolumesError(
      'ERR_MOUNT_FAILED',
      `${what}: the mount does not show ${missing.join(',')} in /proc/self/mountinfo (it shows ${top ? top.options.join(',') : 'no mount'})`,
    );
  }
}

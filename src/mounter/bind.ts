import fs from 'node:fs/promises';
import { execa } from 'execa';
import { ContainerVolumesError, MountCommandError, isErrnoException } from '../errors.js';
import { debugMount } from '../debug.js';
import { openInRootfs } from '../rootfs/open-in-rootfs.js';
import { compareParentsFirst } from '../spec/volume-path.js';
import { checkListedDir, checkMountRequest, checkMountTarget } from './mount-target.js';
import type { MountedVolume, Mounter, MountRequest, MountTarget } from './mounter.js';
import { bindSource, readMountinfo } from './mountinfo.js';

/** `umount` says this (exit 32) when there is nothing to unmount: success for us. */
const NOTHING_MOUNTED = /not mounted|no mount point specified/;

/**
 * Linux bind mounts through util-linux's `mount` and `umount`, run by execa with
 * argument arrays. Needs root (CAP_SYS_ADMIN in the caller's mount namespace).
 *
 * A mount is two processes: the bind itself, then a remount that applies
 * `nosuid,nodev` and the mode and makes the mount private. Both address the target
 * as `/proc/<pid>/fd/<n>`, a descriptor opened inside the rootfs without following
 * symlinks, so no path string is re-resolved between the safety check and the
 * mount. The result is read back from /proc/self/mountinfo: a mount whose options are
 * not what was asked (a read-only remount that did not take) is removed again and
 * reported, never left writable.
 */
export class BindMounter implements Mounter {
  async mount(request: MountRequest): Promise<void> {
    checkMountRequest(request);
    const { source, rootfs, path, mode } = request;
    const what = `mounting volume ${source} at ${path} in rootfs ${rootfs}`;
    const target = openInRootfs(rootfs, path, true);
    const hostPath = target.hostPath;
    try {
      await run(['mount', '--no-canonicalize', '--bind', source, target.procPath], 'ERR_MOUNT_FAILED', what);
    } finally {
      target.close();
    }
    try {
      // The old descriptor still names the directory now covered; the remount must
      // address the new mount, so open the path again (it now crosses into the mount).
      const mounted = openInRootfs(rootfs, path, false);
      if (mounted?.hostPath !== hostPath) {
        mounted?.close();
        throw new ContainerVolumesError('ERR_PATH_ESCAPES_ROOTFS', `${what}: ${path} moved while it was being mounted`);
      }
      try {
        const options = `remount,bind,nosuid,nodev,${mode}`;
        await run(['mount', '--no-canonicalize', '-o', options, '--make-private', mounted.procPath], 'ERR_MOUNT_FAILED', what);
      } finally {
        mounted.close();
      }
      await verify(hostPath, ['nosuid', 'nodev', mode], what);
    } catch (error) {
      await this.unmount({ rootfs, path }).catch((e: Error) => debugMount('rollback of %s failed: %s', hostPath, e.message));
      throw error;
    }
    debugMount('mounted %s at %s (%s)', source, hostPath, mode);
  }

  async unmount(target: MountTarget): Promise<void> {
    checkMountTarget(target);
    const { rootfs, path } = target;
    let mounted;
    try {
      mounted = openInRootfs(rootfs, path, false);
    } catch (error) {
      // Nothing can be mounted at a path that does not resolve to a directory.
      if (error instanceof ContainerVolumesError && error.code === 'ERR_MOUNT_POINT_NOT_DIRECTORY') return;
      throw error;
    }
    if (mounted === null) return;
    try {
      // Lazy (MNT_DETACH): our own descriptor keeps the mount busy, and a detached
      // mount stays usable by processes that still hold files in it, as with Docker.
      await run(['umount', '--no-canonicalize', '--lazy', mounted.procPath], 'ERR_UNMOUNT_FAILED', `unmounting ${path} in rootfs ${rootfs}`);
      debugMount('unmounted %s', mounted.hostPath);
    } catch (error) {
      if (!(error instanceof MountCommandError && NOTHING_MOUNTED.test(error.stderr))) throw error;
    } finally {
      mounted.close();
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
      const path = entry.mountPoint.slice(prefix.length - 1);
      const source = bindSource(entry, all, real);
      byPath.set(path, { path, mode: entry.options.includes('ro') ? 'ro' : 'rw', ...(source ? { source } : {}) });
    }
    return [...byPath.values()].sort((a, b) => compareParentsFirst(a.path, b.path));
  }
}

async function run(command: string[], code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', what: string): Promise<void> {
  debugMount('run %o', command);
  try {
    await execa(command[0] as string, command.slice(1), { stdin: 'ignore' });
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

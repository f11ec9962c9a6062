import fs from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError, isErrnoException } from '../../errors.js';
import { debugMount } from '../../debug.js';
import { ownNamespaceRefused, processChanged, processGone } from '../../namespaces/mount-namespace.js';
import { landingPathIn, O_PATH_DIRECTORY, openInRootfs, procPathOf } from '../../rootfs/open-in-rootfs.js';
import { isBelow } from '../../rules/volume-path.js';
import type { AttachRequest, AttachTarget, MountTarget } from '../mounter.js';
import type { NamespaceHelper } from '../namespace-helper.js';
import { AT_EMPTY_PATH, AT_FDCWD, STATX_ATTR_MOUNT_ROOT, STATX_INO, STATX_MNT_ID } from './constants.js';
import {
  changed,
  checkOptions,
  IN_ROOTFS,
  identityOf,
  type Identity,
  detachedCopy,
  mountFailed,
  missingOptions,
  OPEN_DIRECTORY,
  RESOLVE_ATTEMPTS,
  resolveFailed,
} from './engine.js';
import type { KernelCalls } from './syscalls.js';
import { UserNamespaces } from './user-namespace.js';

/** Directories of a process's root where a volume never lands: the kernel's own file systems. */
const KERNEL_DIRECTORIES = ['/proc', '/sys'];

/** A running process reached through descriptors opened once: its root directory and its mount namespace. */
interface ProcessRoot {
  pid: number;
  /** O_PATH descriptor of `/proc/<pid>/root`: paths are resolved with it as `/`. */
  root: number;
  /** Descriptor of `/proc/<pid>/ns/mnt`: the helper enters the namespace through it. */
  ns: number;
  /** `/proc/<our pid>/fd/<root>`: the same root, for the walker. */
  rootPath: string;
}

/** A request, where it lands in the process's root, and what is mounted there now. */
interface Place {
  request: AttachRequest;
  landed: string;
  state: 'free' | 'volume' | 'taken';
  /** For a volume there already: what its mount lacks of what the request asks (a mode, `idmapped`…). */
  lacking: string[];
}

/**
 * The kernel engine's pipeline, aimed at the mount namespace of a running process: the
 * same detached copy (`open_tree`), options set before anyone sees it (`mount_setattr`),
 * target resolved by `openat2(RESOLVE_IN_ROOT)` from a descriptor of the process's root,
 * and check afterwards by identity; only the attaching and detaching are done by a helper
 * inside that namespace (see namespace-helper.ts), on our descriptors.
 */
export class KernelAttacher {
  constructor(private readonly calls: KernelCalls) {}

  async attachAll(pid: number, requests: readonly AttachRequest[], helper: () => NamespaceHelper, namespace?: string): Promise<string[]> {
    const proc = openProcess(pid, namespace);
    const attached: { place: Place; tree: number }[] = [];
    let userNamespaces: UserNamespaces | undefined;
    try {
      const places = this.survey(proc, requests);
      const taken = places.find((p) => p.state === 'taken');
      if (taken) {
        throw new ContainerVolumesError(
          'ERR_MOUNT_POINT_IN_USE',
          `cannot attach volume ${taken.request.source} at ${taken.request.path} in process ${pid}: something else is mounted at ${taken.landed} there`,
        );
      }
      const unlike = places.find((p) => p.lacking.length > 0);
      if (unlike) {
        throw new ContainerVolumesError(
          'ERR_MOUNT_POINT_IN_USE',
          `cannot attach volume ${unlike.request.source} at ${unlike.request.path} in process ${pid}: it is mounted at ${unlike.landed} there already, but without ${unlike.lacking.join(',')}: detach it first`,
        );
      }
      // A volume below one mounted now would be covered by it: it is mounted again on top.
      const missing = places.filter((p, i) => p.state === 'free' || places.some((q, j) => j < i && q.state === 'free' && isBelow(p.landed, q.landed)));
      if (missing.length === 0) return [];
      const run = helper();
      userNamespaces = await UserNamespaces.open(missing.map((p) => p.request), (i) => describe(missing[i] as Place, pid));
      const seen = new Set<Identity>();
      for (const [i, place] of missing.entries()) {
        const nested = missing.filter((p, j) => j > i && isBelow(p.landed, place.landed) && !missing.some((q, k) => k > i && k < j && isBelow(p.landed, q.landed)));
        await this.attach(proc, place, nested, seen, attached, run, userNamespaces.of(place.request));
      }
      return attached.map((a) => a.place.request.path);
    } catch (error) {
      if (attached.length > 0) {
        const run = helper();
        for (const { place, tree } of [...attached].reverse()) {
          await run.unmount(proc.ns, tree, `rollback of ${describe(place, pid)}`).catch((e: Error) => debugMount('rollback failed: %s', e.message));
        }
      }
      throw error;
    } finally {
      for (const { tree } of attached) this.calls.close(tree);
      userNamespaces?.close();
      closeProcess(proc);
    }
  }

  async detachAll(pid: number, targets: readonly AttachTarget[], helper: () => NamespaceHelper, namespace?: string): Promise<string[]> {
    const proc = openProcess(pid, namespace);
    const pinned: { target: AttachTarget; fd: number }[] = [];
    try {
      // Pinned before any is detached: a path changed meanwhile can no longer redirect one.
      for (const target of targets) {
        const fd = this.volumeAt(proc, target);
        if (fd !== null) pinned.push({ target, fd });
      }
      const detached: string[] = [];
      if (pinned.length === 0) return detached;
      const run = helper();
      for (const { target, fd } of pinned) {
        if (await run.unmount(proc.ns, fd, `detaching volume ${target.source} at ${target.path} in process ${pid}`)) detached.push(target.path);
      }
      return detached;
    } finally {
      for (const { fd } of pinned) this.calls.close(fd);
      closeProcess(proc);
    }
  }

  /** Where each request lands and what is mounted there; refuses a path no volume can take. Changes nothing. */
  private survey(proc: ProcessRoot, requests: readonly AttachRequest[]): Place[] {
    const taken = new Map<string, string>();
    return requests.map((request) => {
      const landed = landingPathIn(proc.rootPath, request.path);
      const kernelDir = KERNEL_DIRECTORIES.find((dir) => landed === dir || isBelow(landed, dir));
      if (landed === '/' || kernelDir !== undefined) {
        const why = landed === '/' ? 'the root itself' : `under ${kernelDir}, the kernel's`;
        throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${request.path} in process ${proc.pid}: through its symlinks it is ${why}`);
      }
      const other = taken.get(landed);
      if (other !== undefined) {
        throw new ContainerVolumesError('ERR_DUPLICATE_MOUNT_POINT', `volume paths ${other} and ${request.path} in process ${proc.pid} are one directory (${landed}) through its symlinks`);
      }
      taken.set(landed, request.path);
      const fd = this.resolve(proc, landed, false, describe({ request, landed }, proc.pid));
      if (fd === null) return { request, landed, state: 'free', lacking: [] };
      try {
        const at = this.calls.statx(fd, '', AT_EMPTY_PATH, STATX_MNT_ID | STATX_INO);
        if ((at.attributes & STATX_ATTR_MOUNT_ROOT) === 0) return { request, landed, state: 'free', lacking: [] };
        if (!this.isVolume(at, request.source)) return { request, landed, state: 'taken', lacking: [] };
        // Left alone only as asked: a plain mount of an idmapped container's volume shows every owner wrong.
        const lacking = missingOptions(this.calls.mountFlags(fd), at.mountId, `/proc/${proc.pid}/mountinfo`, request);
        return { request, landed, state: 'volume', lacking };
      } finally {
        this.calls.close(fd);
      }
    });
  }

  /** The topmost mount at the target's path if it is that volume, pinned; else null. */
  private volumeAt(proc: ProcessRoot, target: AttachTarget): number | null {
    const what = `detaching volume ${target.source} at ${target.path} in process ${proc.pid}`;
    let fd: number | null;
    try {
      const landed = landingPathIn(proc.rootPath, target.path);
      fd = landed === '/' ? null : this.resolve(proc, landed, false, what);
    } catch (error) {
      // A file or a loop on the way: nothing of ours can be mounted there.
      const code = (error as ContainerVolumesError).code;
      if (code === 'ERR_MOUNT_POINT_NOT_DIRECTORY' || code === 'ERR_PATH_ESCAPES_ROOTFS') return null;
      throw error;
    }
    if (fd === null) return null;
    const at = this.calls.statx(fd, '', AT_EMPTY_PATH, STATX_INO);
    if ((at.attributes & STATX_ATTR_MOUNT_ROOT) !== 0 && this.isVolume(at, target.source)) return fd;
    this.calls.close(fd);
    return null;
  }

  /** Whether a mount's root is the volume's directory itself (its device and inode), wherever it was mounted from. */
  private isVolume(at: { dev: string; ino: bigint }, source: string): boolean {
    try {
      const volume = this.calls.statx(AT_FDCWD, source, 0, STATX_INO);
      return volume.dev === at.dev && volume.ino === at.ino;
    } catch {
      return false;
    }
  }

  /** Makes one mount, idmapped with `userns` when given, after the mount points of `nested` inside it (see KernelEngine). */
  private async attach(
    proc: ProcessRoot,
    place: Place,
    nested: readonly Place[],
    seen: Set<Identity>,
    attached: { place: Place; tree: number }[],
    run: NamespaceHelper,
    userns: number | undefined,
  ) {
    const { calls } = this;
    const what = describe(place, proc.pid);
    const tree = detachedCopy(calls, place.request, nested.map((child) => path.posix.relative(place.landed, child.landed)), userns, what);
    let target: number | null = null;
    try {
      target = this.resolve(proc, place.landed, true, what) as number;
      const identity = identityOf(calls.statx(target, '', AT_EMPTY_PATH, STATX_MNT_ID | STATX_INO));
      if (seen.has(identity)) {
        throw new ContainerVolumesError('ERR_DUPLICATE_MOUNT_POINT', `${what} refused: ${place.request.path} resolves to the mount point of another volume of the same container`);
      }
      await run.move(proc.ns, tree, target, what);
    } catch (error) {
      calls.close(tree);
      throw mountFailed(error, what);
    } finally {
      if (target !== null) calls.close(target);
    }
    attached.push({ place, tree });
    seen.add(this.verify(proc, place, tree, what));
  }

  /**
   * Opens the mount point again through the process's root, as a process there would:
   * it must now be the root of the mount just attached, with the flags asked for.
   */
  private verify(proc: ProcessRoot, place: Place, tree: number, what: string): Identity {
    const { calls } = this;
    const mountId = calls.statx(tree, '', AT_EMPTY_PATH, STATX_MNT_ID).mountId;
    const there = this.resolve(proc, place.landed, false, what);
    if (there === null) throw changed(targetOf(proc, place.landed), what);
    try {
      const seen = calls.statx(there, '', AT_EMPTY_PATH, STATX_MNT_ID | STATX_INO);
      if (seen.mountId !== mountId || (seen.attributes & STATX_ATTR_MOUNT_ROOT) === 0) throw changed(targetOf(proc, place.landed), what);
      checkOptions(calls.mountFlags(there), mountId, `/proc/${proc.pid}/mountinfo`, place.request, what);
      return identityOf(seen);
    } finally {
      calls.close(there);
    }
  }

  /**
   * The directory at a landed path inside the process's root, following no link (one
   * met now was swapped in since), as an O_PATH descriptor; `create` makes what is
   * missing (with the walker, following no link either), else null.
   */
  private resolve(proc: ProcessRoot, landed: string, create: boolean, what: string): number | null {
    const target = targetOf(proc, landed);
    for (let attempt = 0; attempt < RESOLVE_ATTEMPTS; attempt++) {
      try {
        return this.calls.openat2(proc.root, landed, OPEN_DIRECTORY, IN_ROOTFS);
      } catch (error) {
        if (isErrnoException(error, 'EAGAIN')) continue;
        if (!isErrnoException(error, 'ENOENT')) throw resolveFailed(error, target, what);
        if (!create) return null;
        if (attempt > 0) break;
      }
      try {
        openInRootfs('/', landed, { create: true, follow: false, fsRoot: proc.rootPath }).close();
      } catch (error) {
        if (error instanceof ContainerVolumesError) {
          throw new ContainerVolumesError(error.code, `${what}: cannot make its mount point: ${error.message}`, { cause: error });
        }
        throw error;
      }
    }
    throw changed(target, what);
  }
}

/**
 * Opens the process's root and mount namespace; refuses a process that is gone or shares
 * our namespace. The two are opened one after the other by pid, so the process is then
 * asked which namespace it is in: the one opened (a process that moved in between would
 * have its root resolved in one namespace and the mounts moved into another), and the
 * one the caller recorded, if given (ERR_PROCESS_CHANGED otherwise).
 */
function openProcess(pid: number, recorded: string | undefined): ProcessRoot {
  let ns: number;
  try {
    ns = fs.openSync(`/proc/${pid}/ns/mnt`, 'r');
  } catch (error) {
    if (isErrnoException(error, 'ENOENT') || isErrnoException(error, 'ESRCH')) throw processGone(pid, error);
    throw error;
  }
  try {
    const [theirs, ours] = [fs.fstatSync(ns), fs.statSync('/proc/self/ns/mnt')];
    if (theirs.dev === ours.dev && theirs.ino === ours.ino) throw ownNamespaceRefused(pid);
    const root = fs.openSync(`/proc/${pid}/root`, O_PATH_DIRECTORY);
    const opened = `mnt:[${theirs.ino}]`;
    let now: string | undefined;
    try {
      now = fs.readlinkSync(`/proc/${pid}/ns/mnt`);
    } catch {
      // Gone: judged below as moved.
    }
    if (now !== opened || (recorded !== undefined && opened !== recorded)) {
      fs.closeSync(root);
      throw processChanged(pid, recorded ?? opened, now);
    }
    return { pid, root, ns, rootPath: procPathOf(root) };
  } catch (error) {
    fs.closeSync(ns);
    if (isErrnoException(error, 'ENOENT') || isErrnoException(error, 'ESRCH')) throw processGone(pid, error);
    throw error;
  }
}

function closeProcess(proc: ProcessRoot): void {
  fs.closeSync(proc.root);
  fs.closeSync(proc.ns);
}

function targetOf(proc: ProcessRoot, landed: string): MountTarget {
  return { rootfs: `the root of process ${proc.pid}`, path: landed };
}

function describe(place: Pick<Place, 'request' | 'landed'>, pid: number): string {
  return `attaching volume ${place.request.source} at ${place.request.path} in process ${pid}`;
}

import { existsSync, realpathSync } from 'node:fs';
import { optionsObject } from '../rules/options.js';
import { ContainerVolumesError, isErrnoException } from '../errors.js';
import { compareParentsFirst } from '../rules/volume-path.js';
import { landingPath } from '../rootfs/open-in-rootfs.js';
import { chooseEngine, type MountEngine } from './engine-choice.js';
import type { KernelEngine } from './kernel/engine.js';
import { KernelAttacher } from './kernel/attach.js';
import { kernelMountApi } from './kernel/probe.js';
import { checkAttachTargets, checkListedDir, checkMountRequest, checkMountTarget, landRequests } from './mount-target.js';
import type { AttachRequest, AttachTarget, MountedVolume, Mounter, MountRequest, MountTarget } from './mounter.js';
import { namespaceHelper } from './namespace-helper.js';
import { bindSources, readMountinfo } from './mountinfo.js';
import { checkMountPrivilege } from './privilege.js';
import { OWN_NAMESPACE, namespaceOfProcess, type Namespace } from './target-namespace.js';
import { mountWithUtilLinux, unmountWithUtilLinux } from './util-linux/engine.js';
import { STAGING, clearStaging } from './util-linux/staging.js';

const namespaces = new WeakMap<BindMounter, Namespace>();

/**
 * A BindMounter that makes, lists and removes mounts in the mount namespace of process
 * `pid` (as `mount -N` does), for handlers whose mounts must never reach the host's.
 */
export function bindMounterIn(pid: number): BindMounter {
  // Node cannot enter another mount namespace (setns(CLONE_NEWNS) refuses a
  // multi-threaded process), and the kernel's calls act in the caller's, so mounts there
  // go through util-linux run under nsenter.
  const mounter = new BindMounter({ engine: 'util-linux' });
  namespaces.set(mounter, namespaceOfProcess(pid));
  return mounter;
}

/** Options of `new BindMounter(options)`. */
export interface BindMounterOptions {
  /**
   * Which engine makes the mounts: 'kernel' (the kernel's mount API through koffi) or
   * 'util-linux' (`mount` and `umount`). Default: the environment variable
   * CONTAINER_VOLUMES_MOUNT_ENGINE if set, else the kernel's when it can run here.
   */
  engine?: MountEngine;
}

/**
 * Linux bind mounts of volume directories into container root filesystems. Needs root
 * (CAP_SYS_ADMIN in the caller's mount namespace), from the first mount or unmount on.
 * Every mount is `nosuid,nodev`, read-only where its mode is `ro` (verified, never
 * assumed) and private. A path is resolved inside the rootfs as the container will see it: symlinks there are
 * followed, but never out of the rootfs (`/var/run -> ../run` mounts at `<rootfs>/run`,
 * a link to `/data` means `<rootfs>/data`).
 */
export class BindMounter implements Mounter {
  /** The engine in use (see `BindMounterOptions.engine`). */
  readonly engine: MountEngine;
  readonly #kernel: KernelEngine | undefined;

  /**
   * Chooses the engine once, for the mounter's lifetime (see `BindMounterOptions.engine`).
   * A forced engine that cannot run here is ERR_MOUNT_ENGINE_UNAVAILABLE; an unknown one,
   * or options that are not an object or have unknown keys, ERR_INVALID_ARGUMENT.
   * Construction needs no privilege: the first mount or unmount without CAP_SYS_ADMIN is
   * ERR_MOUNT_PERMISSION_DENIED.
   */
  constructor(options?: BindMounterOptions) {
    const { engine } = optionsObject<BindMounterOptions>(options, 'BindMounter options', ['engine']);
    const chosen = chooseEngine(engine);
    this.engine = chosen.name;
    this.#kernel = chosen.kernel;
  }

  /**
   * True with the kernel engine, which mounts a request's `idmap` idmapped; false with
   * util-linux, whose `mount` (before 2.39) cannot: it refuses such a request with
   * ERR_IDMAP_UNSUPPORTED before mounting anything.
   */
  get supportsIdmap(): boolean {
    return this.#kernel !== undefined;
  }

  mount(request: MountRequest): Promise<void> {
    return this.mountAll([request]);
  }

  unmount(target: MountTarget): Promise<void> {
    return this.unmountAll([target]);
  }

  async mountAll(requests: readonly MountRequest[]): Promise<void> {
    if (!Array.isArray(requests)) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'mountAll takes an array of mount requests');
    requests.forEach(checkMountRequest);
    if (requests.length === 0) return;
    const idmapped = requests.find((r) => r.idmap);
    if (idmapped && !this.#kernel) {
      throw new ContainerVolumesError(
        'ERR_IDMAP_UNSUPPORTED',
        `mounting ${idmapped.path} in rootfs ${idmapped.rootfs} idmapped needs the kernel mount engine: this BindMounter uses util-linux, whose mount cannot make idmapped mounts before 2.39`,
      );
    }
    checkMountPrivilege(`mounting ${requests[0]?.path} in rootfs ${requests[0]?.rootfs}`);
    const landed = landRequests(requests);
    if (this.#kernel) await this.#kernel.mountAll(landed);
    else await mountWithUtilLinux(namespaceOf(this), landed);
  }

  async unmountAll(targets: readonly MountTarget[]): Promise<void> {
    if (!Array.isArray(targets)) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'unmountAll takes an array of mount targets');
    targets.forEach(checkMountTarget);
    if (targets.length === 0) return;
    checkMountPrivilege(`unmounting ${targets[0]?.path} in rootfs ${targets[0]?.rootfs}`);
    const landedTargets = targets.flatMap(landed);
    if (this.#kernel) await this.#kernel.unmountAll(landedTargets);
    else await unmountWithUtilLinux(namespaceOf(this), landedTargets);
  }

  async list(dir: string): Promise<MountedVolume[]> {
    checkListedDir(dir);
    let real: string;
    try {
      real = realpathSync.native(dir);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return [];
      // A directory above it turned into a file, a symlink loop: nothing can be reached there by its path.
      throw new ContainerVolumesError('ERR_INVALID_ROOTFS', `cannot list the mounts under ${dir}: ${(error as Error).message}`, { cause: error });
    }
    const prefix = real === '/' ? '/' : `${real}/`;
    const all = await readMountinfo(namespaceOf(this).mountinfo);
    const sourceOf = bindSources(all, real === '/' ? undefined : real);
    const found: MountedVolume[] = [];
    // mountinfo lists a mount after the one it is stacked on; the stable sort keeps that order.
    for (const entry of all) {
      if (!entry.mountPoint.startsWith(prefix) || entry.mountPoint === real) continue;
      const mountPath = entry.mountPoint.slice(prefix.length - 1);
      const source = sourceOf(entry);
      found.push({
        path: mountPath,
        mode: entry.options.includes('ro') ? 'ro' : 'rw',
        options: entry.options,
        propagation: entry.propagation,
        ...(source ? { source } : {}),
      });
    }
    return found.sort((a, b) => compareParentsFirst(a.path, b.path));
  }

  /**
   * Mounts volumes in the mount namespace of the running process `pid` (see
   * `Mounter.attachAll`). Needs the kernel engine (ERR_ATTACH_UNSUPPORTED otherwise) and
   * util-linux's nsenter, mount and umount (ERR_ATTACH_HELPER_MISSING).
   */
  async attachAll(pid: number, requests: readonly AttachRequest[], namespace?: string): Promise<string[]> {
    checkAttachTargets(pid, requests, true, namespace);
    if (requests.length === 0) return [];
    checkMountPrivilege(`attaching ${requests[0]?.path} in process ${pid}`);
    return this.#attacher('attach').attachAll(pid, requests, namespaceHelper, namespace);
  }

  /** Detaches, in the order given, the mounts at the paths that are those volumes (see `Mounter.detachAll`). */
  async detachAll(pid: number, targets: readonly AttachTarget[], namespace?: string): Promise<string[]> {
    checkAttachTargets(pid, targets, false, namespace);
    if (targets.length === 0) return [];
    checkMountPrivilege(`detaching ${targets[0]?.path} in process ${pid}`);
    return this.#attacher('detach').detachAll(pid, targets, namespaceHelper, namespace);
  }

  #attacher(doing: string): KernelAttacher {
    const calls = this.#kernel ? kernelMountApi().calls : undefined;
    if (calls === undefined || namespaceOf(this) !== OWN_NAMESPACE) {
      throw new ContainerVolumesError(
        'ERR_ATTACH_UNSUPPORTED',
        `cannot ${doing} volumes in a running process with the ${this.engine} engine: it needs the kernel engine (new BindMounter({ engine: 'kernel' }): Linux 5.12 or later and koffi)`,
      );
    }
    return new KernelAttacher(calls);
  }

  /** Detaches and removes the staging directories of processes that died mid-mount. */
  async recover(): Promise<void> {
    if (namespaceOf(this) !== OWN_NAMESPACE || !existsSync(STAGING)) return;
    await clearStaging(await readMountinfo());
  }
}

/**
 * Where a target lands in its rootfs; nowhere a volume can be mounted when that is the
 * rootfs itself or the way there holds a file or a symlink loop: nothing to unmount.
 */
function landed(target: MountTarget): MountTarget[] {
  let at: string;
  try {
    at = landingPath(target.rootfs, target.path);
  } catch (error) {
    if (error instanceof ContainerVolumesError && (error.code === 'ERR_MOUNT_POINT_NOT_DIRECTORY' || error.code === 'ERR_PATH_ESCAPES_ROOTFS')) return [];
    throw error;
  }
  if (at === '/') return [];
  return at === target.path ? [target] : [{ ...target, path: at }];
}

function namespaceOf(mounter: BindMounter): Namespace {
  return namespaces.get(mounter) ?? OWN_NAMESPACE;
}

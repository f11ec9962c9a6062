import path from 'node:path';
import { optionsObject } from '../rules/options.js';
import { ContainerVolumesError, describe } from '../errors.js';
import { compareParentsFirst } from '../rules/volume-path.js';
import { copyIdMap } from '../rules/idmap.js';
import type { IdMap, Mode } from '../types.js';
import type { AttachRequest, AttachTarget, MountedVolume, Mounter, MountRequest, MountTarget } from './mounter.js';
import { checkAttachTargets, checkListedDir, checkMountRequest, checkMountTarget } from './mount-target.js';
import { isBelow } from '../rules/volume-path.js';

/** One call a FakeMounter received, with its arguments as given: an entry of `calls`. */
export type FakeMounterCall =
  | {
      /** A `mount` call. */
      op: 'mount';
      /** The volume's host directory. */
      source: string;
      /** The container's rootfs. */
      rootfs: string;
      /** The container path, as requested. */
      path: string;
      /** The requested mode. */
      mode: Mode;
      /** The mapping the mount is idmapped with, when the request has one (a copy). */
      idmap?: IdMap;
    }
  | {
      /** An `unmount` call. */
      op: 'unmount';
      /** The container's rootfs. */
      rootfs: string;
      /** The container path, as requested. */
      path: string;
    }
  | {
      /** A `list` call. */
      op: 'list';
      /** The directory listed (normally a rootfs). */
      dir: string;
    }
  | {
      /** One volume mounted by an `attachAll` call (a volume already there makes none). */
      op: 'attach';
      /** The process given. */
      pid: number;
      /** The volume's host directory. */
      source: string;
      /** The container path. */
      path: string;
      /** The requested mode. */
      mode: Mode;
      /** The mapping the mount is idmapped with, when the request has one (a copy). */
      idmap?: IdMap;
    }
  | {
      /** One volume unmounted by a `detachAll` call (a path where the volume is not makes none). */
      op: 'detach';
      /** The process given. */
      pid: number;
      /** The container path. */
      path: string;
    };

/**
 * A rule that makes chosen FakeMounter calls fail, to exercise rollback: a matching call
 * is recorded in `calls`, then throws and changes nothing (a mount is not made, an
 * unmount leaves the mount in place).
 */
export interface FakeFailure {
  /** Which method fails. */
  op: FakeMounterCall['op'];
  /**
   * Only calls for this container path, compared as requested, fail (mount, unmount,
   * attach, detach: a rule with a path never matches list); default: any.
   */
  path?: string;
  /** What the call throws; default an ERR_MOUNT_FAILED / ERR_UNMOUNT_FAILED error. */
  error?: Error;
  /** How many matching calls fail before the rule is used up; default 1. */
  times?: number;
}

interface FakeMount {
  source: string;
  mode: Mode;
  /** Made by `attachAll` for a request with an idmap. */
  idmapped?: boolean;
}

/** Options of `new FakeMounter(options)`. */
export interface FakeMounterOptions {
  /** Whether it declares it makes idmapped mounts (`Mounter.supportsIdmap`). Default true. */
  supportsIdmap?: boolean;
}

/**
 * A Mounter that keeps its mounts in memory: for tests that need no root. It records
 * every call in `calls` and can be told to fail chosen calls (`failOn`) so that
 * rollback paths can be exercised. It does not look at the file system, so it cannot
 * catch symlink escapes; the real BindMounter's tests do.
 */
export class FakeMounter implements Mounter {
  /**
   * Every call, in order, with its arguments, those failed by a `failOn` rule included;
   * a call refused for bad arguments is not recorded. Empty it with `clearCalls`.
   */
  readonly calls: FakeMounterCall[] = [];
  /** Host path of the mount point → stack of mounts there, the last one on top. */
  private readonly mounts = new Map<string, FakeMount[]>();
  /** Per process given to `attachAll`: container path → stack of mounts, as in `mounts`. */
  private readonly attached = new Map<number, Map<string, FakeMount[]>>();
  private readonly failures: FakeFailure[] = [];
  /** See `FakeMounterOptions.supportsIdmap`: a mapping it is given is recorded in `calls`. */
  readonly supportsIdmap: boolean;

  /** Options that are not an object, have unknown keys or a non-boolean `supportsIdmap` are ERR_INVALID_ARGUMENT. */
  constructor(options?: FakeMounterOptions) {
    const { supportsIdmap = true } = optionsObject<FakeMounterOptions>(options, 'FakeMounter options', ['supportsIdmap']);
    if (typeof supportsIdmap !== 'boolean') throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `FakeMounter options.supportsIdmap must be a boolean, got ${describe(supportsIdmap)}`);
    this.supportsIdmap = supportsIdmap;
  }

  /**
   * Adds a failure rule. Rules are tried in the order added, the first that matches a
   * call is used, and a rule is dropped once it has failed `times` calls.
   */
  failOn(failure: FakeFailure): void {
    const { op, path: at, error, times = 1 } = optionsObject<FakeFailure>(failure, 'failOn rule', ['op', 'path', 'error', 'times']);
    if (op === undefined || !['mount', 'unmount', 'list', 'attach', 'detach'].includes(op)) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `failOn: op must be 'mount', 'unmount', 'list', 'attach' or 'detach', got ${describe(op)}`);
    }
    if (at !== undefined && typeof at !== 'string') throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `failOn: path must be a string, got ${describe(at)}`);
    if (error !== undefined && !(error instanceof Error)) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `failOn: error must be an Error, got ${describe(error)}`);
    if (!Number.isSafeInteger(times) || times < 1) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `failOn: times must be a whole number of calls, 1 or more, got ${describe(times)}`);
    }
    this.failures.push({ op, times, ...(at === undefined ? {} : { path: at }), ...(error === undefined ? {} : { error }) });
  }

  /** Empties `calls` (so a test can look at what one step did); the mounts and the failure rules stay. */
  clearCalls(): void {
    this.calls.length = 0;
  }

  async mount(request: MountRequest): Promise<void> {
    checkMountRequest(request);
    const { source, rootfs, path: containerPath, mode, idmap } = request;
    this.calls.push({ op: 'mount', source, rootfs, path: containerPath, mode, ...(idmap ? { idmap: copyIdMap(idmap) } : {}) });
    this.maybeFail('mount', containerPath, 'ERR_MOUNT_FAILED');
    const at = path.join(rootfs, containerPath);
    this.mounts.set(at, [...(this.mounts.get(at) ?? []), { source, mode }]);
  }

  async unmount(target: MountTarget): Promise<void> {
    checkMountTarget(target);
    this.calls.push({ op: 'unmount', rootfs: target.rootfs, path: target.path });
    this.maybeFail('unmount', target.path, 'ERR_UNMOUNT_FAILED');
    const at = path.join(target.rootfs, target.path);
    const stack = this.mounts.get(at) ?? [];
    stack.pop();
    if (stack.length === 0) this.mounts.delete(at);
  }

  async list(dir: string): Promise<MountedVolume[]> {
    checkListedDir(dir);
    this.calls.push({ op: 'list', dir });
    this.maybeFail('list', undefined, 'ERR_MOUNT_FAILED');
    const prefix = dir.endsWith('/') ? dir : `${dir}/`;
    return [...this.mounts.entries()]
      .filter(([at]) => at.startsWith(prefix))
      .flatMap(([at, stack]) => stack.map(({ mode, source }) => ({ path: at.slice(prefix.length - 1), mode, source })))
      .sort((a, b) => compareParentsFirst(a.path, b.path));
  }

  /**
   * Mounts volumes in a process's namespace, kept in memory per pid (any positive pid
   * will do: the process is not looked at, nor compared with `namespace`, which is only
   * checked for its form). As `BindMounter.attachAll`: a path whose
   * topmost mount is another volume, or this volume in another mode or not idmapped as
   * asked, is ERR_MOUNT_POINT_IN_USE, one that is this volume as asked is left alone, and
   * an injected failure undoes what the call made.
   */
  async attachAll(pid: number, requests: readonly AttachRequest[], namespace?: string): Promise<string[]> {
    checkAttachTargets(pid, requests, true, namespace);
    const ns = this.attached.get(pid) ?? new Map<string, FakeMount[]>();
    const top = (at: string) => ns.get(at)?.at(-1);
    const taken = requests.find((r) => top(r.path) !== undefined && top(r.path)?.source !== r.source);
    if (taken) throw new ContainerVolumesError('ERR_MOUNT_POINT_IN_USE', `cannot attach ${taken.source} at ${taken.path} in process ${pid}: another mount is there`);
    const unlike = requests.find((r) => top(r.path) !== undefined && (top(r.path)?.mode !== r.mode || (r.idmap !== undefined && !top(r.path)?.idmapped)));
    if (unlike) throw new ContainerVolumesError('ERR_MOUNT_POINT_IN_USE', `cannot attach ${unlike.source} at ${unlike.path} in process ${pid}: it is there already, but not as asked: detach it first`);
    const missing = requests.filter((r, i) => top(r.path) === undefined || requests.some((q, j) => j < i && top(q.path) === undefined && isBelow(r.path, q.path)));
    const made: string[] = [];
    try {
      for (const { source, path: at, mode, idmap } of missing) {
        this.calls.push({ op: 'attach', pid, source, path: at, mode, ...(idmap ? { idmap: copyIdMap(idmap) } : {}) });
        this.maybeFail('attach', at, 'ERR_MOUNT_FAILED');
        ns.set(at, [...(ns.get(at) ?? []), { source, mode, ...(idmap ? { idmapped: true } : {}) }]);
        this.attached.set(pid, ns);
        made.push(at);
      }
    } catch (error) {
      for (const at of made.reverse()) ns.get(at)?.pop();
      throw error;
    }
    return missing.map((r) => r.path);
  }

  /** Unmounts, in the order given, the topmost mount at each path of the process's namespace that is that volume. */
  async detachAll(pid: number, targets: readonly AttachTarget[], namespace?: string): Promise<string[]> {
    checkAttachTargets(pid, targets, false, namespace);
    const ns = this.attached.get(pid);
    const detached: string[] = [];
    for (const { source, path: at } of targets) {
      const stack = ns?.get(at);
      if (stack?.at(-1)?.source !== source) continue;
      this.calls.push({ op: 'detach', pid, path: at });
      this.maybeFail('detach', at, 'ERR_UNMOUNT_FAILED');
      stack.pop();
      if (stack.length === 0) ns?.delete(at);
      detached.push(at);
    }
    return detached;
  }

  /** What `attachAll` mounted in the namespace of `pid`, as `list` reports a rootfs's mounts (container paths). */
  attachedIn(pid: number): MountedVolume[] {
    return [...(this.attached.get(pid)?.entries() ?? [])]
      .flatMap(([at, stack]) => stack.map(({ mode, source }) => ({ path: at, mode, source })))
      .sort((a, b) => compareParentsFirst(a.path, b.path));
  }

  private maybeFail(op: FakeMounterCall['op'], containerPath: string | undefined, code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED') {
    const rule = this.failures.find((f) => f.op === op && (f.path === undefined || f.path === containerPath));
    if (!rule) return;
    if (--(rule.times as number) <= 0) this.failures.splice(this.failures.indexOf(rule), 1);
    throw rule.error ?? new ContainerVolumesError(code, `injected ${op} failure${containerPath ? ` at ${containerPath}` : ''}`);
  }
}

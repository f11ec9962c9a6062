/**
 * A reference model of SPEC §4 (create, share, mount, remove, prune), written from the
 * SPEC and docs/semantics.md alone: it imports nothing from src/, so a rule the library
 * gets wrong cannot be copied into the model by accident.
 *
 * Containers and volumes are named by their creation order (0, 1, 2…), never by the
 * uuids the library picks; the test maps one onto the other. Every operation returns
 * what the library must resolve to, or the error code it must reject with. The checks
 * run in the order the library documents (arguments, then the store), so that when an
 * input is wrong in two ways both agree on which error wins.
 */

export type Mode = 'rw' | 'ro';

export interface ModelMount {
  path: string;
  volume: number;
  mode: Mode;
  origin: 'created' | { from: number };
}

export interface ModelContainer {
  id: number;
  /** Which rootfs it was created on (the test makes a fresh directory per create). */
  rootfs: number;
  volumes: ModelMount[];
  mounted: boolean;
}

export interface ModelVolumeInfo {
  id: number;
  usedBy: { containerId: number; path: string; mode: Mode }[];
}

/** How a command names a container or a volume. */
export type Ref =
  /** The n-th (modulo) of those that exist now: containers not removed, volumes not deleted. */
  | { kind: 'live'; n: number }
  /** The n-th (modulo) of those that exist now and are idle (containers not mounted, volumes no container references), else as `live`. */
  | { kind: 'idle'; n: number }
  /** The n-th (modulo) of those ever made, possibly gone since. */
  | { kind: 'any'; n: number }
  /** A well-formed id that was never used. */
  | { kind: 'unknown' }
  /** A malformed id made from the n-th one ever made (or from the unknown one). */
  | { kind: 'malformed'; n: number; variant: MalformedVariant };

export type MalformedVariant = 'upper' | 'slash' | 'dotdot' | 'empty' | 'number';

/**
 * A reference resolved against the model's state at the time of the call: an index
 * (the test passes the library the uuid it mapped to that index), a well-formed id
 * that names nothing, or a malformed one (`base`: the index it was made from, if any).
 */
export type Resolved = { id: number } | { unknown: true } | { malformed: MalformedVariant; base: number | undefined };

export type Outcome<T> = { ok: T; created?: { path: string; volume: number }[] } | { error: string };

const PATH_MAX = 4096;
const NAME_MAX = 255;

/** SPEC §4.1: absolute, no NUL, no `..`, not `/`, under PATH_MAX, components under NAME_MAX; cleaned as Docker cleans. */
export function cleanVolumePath(given: unknown): string | undefined {
  if (typeof given !== 'string' || given.includes('\0') || !given.startsWith('/')) return undefined;
  const segments = given.split('/');
  if (segments.includes('..')) return undefined;
  const kept = segments.filter((s) => s !== '' && s !== '.');
  if (kept.length === 0) return undefined;
  const clean = `/${kept.join('/')}`;
  if (Buffer.byteLength(clean) >= PATH_MAX || kept.some((s) => Buffer.byteLength(s) > NAME_MAX)) return undefined;
  return clean;
}

/** Parents first: shallower paths first, then by path. */
export function parentsFirst(a: ModelMount, b: ModelMount): number {
  const depth = a.path.split('/').length - b.path.split('/').length;
  return depth !== 0 ? depth : a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
}

/** One `volumesFrom` entry as the model sees it: the source reference and the text after the first ':'. */
export interface ModelVolumesFrom {
  /** 'not-a-string': the entry itself is not a string (a number where an id belongs). */
  source: Resolved | 'not-a-string';
  /** undefined: no ':' at all. */
  mode: string | undefined;
}

export class VolumesModel {
  readonly containers = new Map<number, ModelContainer>();
  readonly volumes = new Set<number>();
  containersMade = 0;
  volumesMade = 0;

  /** `other`: a live or idle reference never picks this container (a share source other than its target). */
  resolveContainer(ref: Ref, other?: Resolved): Resolved {
    const live = [...this.containers.values()].filter((c) => !(other && 'id' in other && c.id === other.id));
    return resolve(ref, live.map((c) => c.id), live.filter((c) => !c.mounted).map((c) => c.id), this.containersMade);
  }

  resolveVolume(ref: Ref): Resolved {
    const live = [...this.volumes].sort((a, b) => a - b);
    return resolve(ref, live, live.filter((v) => this.users(v).length === 0), this.volumesMade);
  }

  create(paths: unknown, volumesFrom: readonly ModelVolumesFrom[], rootfs: number | 'invalid'): Outcome<ModelContainer> {
    const clean = this.cleanPaths(paths);
    if ('error' in clean) return clean;
    for (const entry of volumesFrom) {
      if (entry.source === 'not-a-string') return { error: 'ERR_INVALID_ARGUMENT' };
      // The mode first: a bad suffix is ERR_INVALID_MODE whatever precedes it.
      if (entry.mode !== undefined && entry.mode !== 'ro' && entry.mode !== 'rw') return { error: 'ERR_INVALID_MODE' };
      // An entry is a string: a malformed id in it names no container.
      if ('malformed' in entry.source) return { error: 'ERR_CONTAINER_NOT_FOUND' };
    }
    if (rootfs === 'invalid') return { error: 'ERR_INVALID_ROOTFS' };
    const sources: { source: ModelContainer; mode: Mode | undefined }[] = [];
    for (const entry of volumesFrom) {
      const source = this.live(entry.source as Resolved);
      if (!source) return { error: 'ERR_CONTAINER_NOT_FOUND' };
      sources.push({ source, mode: entry.mode as Mode | undefined });
    }
    const shared = new Map<string, ModelMount>();
    // Docker: later sources win a path; `:ro` makes all read-only, `:rw` never widens (AND).
    for (const { source, mode } of sources) {
      for (const v of source.volumes) {
        shared.set(v.path, { path: v.path, volume: v.volume, mode: mode === 'ro' ? 'ro' : v.mode, origin: { from: source.id } });
      }
    }
    // Docker: an anonymous path a shared volume already covers gets no new volume.
    const anonymous = clean.ok.filter((p) => !shared.has(p));
    if (belowReadOnly([...shared.values(), ...anonymous.map((p): ModelMount => ({ path: p, volume: -1, mode: 'rw', origin: 'created' }))])) {
      return { error: 'ERR_MOUNT_POINT_READ_ONLY' };
    }
    const id = this.containersMade++;
    const created = anonymous.map((p) => this.newVolume(p));
    const container: ModelContainer = { id, rootfs, mounted: false, volumes: [...shared.values(), ...created].sort(parentsFirst) };
    this.containers.set(id, container);
    return { ok: copy(container), created: created.map(({ path, volume }) => ({ path, volume })) };
  }

  createVolumes(target: Resolved, paths: unknown): Outcome<ModelMount[]> {
    if ('malformed' in target) return { error: malformedError(target, 'ERR_CONTAINER_NOT_FOUND') };
    const clean = this.cleanPaths(paths);
    if ('error' in clean) return clean;
    const container = this.changeable(target);
    if ('error' in container) return container;
    if (clean.ok.some((p) => container.volumes.some((v) => v.path === p))) return { error: 'ERR_DUPLICATE_MOUNT_POINT' };
    const planned = clean.ok.map((p): ModelMount => ({ path: p, volume: -1, mode: 'rw', origin: 'created' }));
    if (belowReadOnly([...container.volumes, ...planned])) return { error: 'ERR_MOUNT_POINT_READ_ONLY' };
    const created = clean.ok.map((p) => this.newVolume(p));
    container.volumes = [...container.volumes, ...created].sort(parentsFirst);
    return { ok: created.map((v) => ({ ...v })), created: created.map(({ path, volume }) => ({ path, volume })) };
  }

  shareVolumesFrom(target: Resolved, from: Resolved, mode: unknown): Outcome<ModelMount[]> {
    if ('malformed' in target) return { error: malformedError(target, 'ERR_CONTAINER_NOT_FOUND') };
    if ('malformed' in from) return { error: malformedError(from, 'ERR_CONTAINER_NOT_FOUND') };
    if (mode !== undefined && mode !== 'ro' && mode !== 'rw') return { error: 'ERR_INVALID_MODE' };
    if (sameRef(target, from)) return { error: 'ERR_SHARE_FROM_SELF' };
    const container = this.changeable(target);
    if ('error' in container) return container;
    const source = this.live(from);
    if (!source) return { error: 'ERR_CONTAINER_NOT_FOUND' };
    // Strict, unlike create: any path the container already has refuses the whole share.
    if (source.volumes.some((s) => container.volumes.some((v) => v.path === s.path))) return { error: 'ERR_DUPLICATE_MOUNT_POINT' };
    const added = source.volumes.map(
      (v): ModelMount => ({ path: v.path, volume: v.volume, mode: mode === 'ro' ? 'ro' : v.mode, origin: { from: source.id } }),
    );
    if (belowReadOnly([...container.volumes, ...added])) return { error: 'ERR_MOUNT_POINT_READ_ONLY' };
    container.volumes = [...container.volumes, ...added].sort(parentsFirst);
    return { ok: added.map((v) => ({ ...v })) };
  }

  /** Idempotent both ways: the flag is all that changes. */
  setMounted(ref: Resolved, mounted: boolean): Outcome<ModelContainer> {
    const found = this.existing(ref);
    if ('error' in found) return found;
    found.mounted = mounted;
    return { ok: copy(found) };
  }

  get(ref: Resolved): Outcome<ModelContainer> {
    const found = this.existing(ref);
    return 'error' in found ? found : { ok: copy(found) };
  }

  list(): ModelContainer[] {
    return [...this.containers.values()].map(copy);
  }

  remove(ref: Resolved, force: boolean, withVolumes: boolean): Outcome<undefined> {
    const found = this.existing(ref);
    if ('error' in found) return found;
    if (found.mounted && !force) return { error: 'ERR_CONTAINER_MOUNTED' };
    this.containers.delete(found.id);
    // `docker rm -v`: only the volumes no remaining container references go.
    if (withVolumes) for (const v of found.volumes) if (this.users(v.volume).length === 0) this.volumes.delete(v.volume);
    return { ok: undefined };
  }

  removeVolume(ref: Resolved): Outcome<undefined> {
    const volume = this.existingVolume(ref);
    if (typeof volume !== 'number') return volume;
    if (this.users(volume).length > 0) return { error: 'ERR_VOLUME_IN_USE' };
    this.volumes.delete(volume);
    return { ok: undefined };
  }

  inspect(ref: Resolved): Outcome<ModelVolumeInfo> {
    const volume = this.existingVolume(ref);
    if (typeof volume !== 'number') return volume;
    return { ok: { id: volume, usedBy: this.users(volume) } };
  }

  listVolumes(): ModelVolumeInfo[] {
    return [...this.volumes].sort((a, b) => a - b).map((id) => ({ id, usedBy: this.users(id) }));
  }

  prune(): number[] {
    const removed = [...this.volumes].filter((id) => this.users(id).length === 0).sort((a, b) => a - b);
    for (const id of removed) this.volumes.delete(id);
    return removed;
  }

  /** Every container using a volume, by container id. */
  users(volume: number): ModelVolumeInfo['usedBy'] {
    const out: ModelVolumeInfo['usedBy'] = [];
    for (const c of [...this.containers.values()].sort((a, b) => a.id - b.id)) {
      for (const v of c.volumes) if (v.volume === volume) out.push({ containerId: c.id, path: v.path, mode: v.mode });
    }
    return out;
  }

  private cleanPaths(paths: unknown): Outcome<string[]> {
    if (!Array.isArray(paths)) return { error: 'ERR_INVALID_ARGUMENT' };
    const clean: string[] = [];
    for (const given of paths) {
      const p = cleanVolumePath(given);
      if (p === undefined) return { error: 'ERR_INVALID_VOLUME_PATH' };
      // The same path given twice (however spelled) is one volume.
      if (!clean.includes(p)) clean.push(p);
    }
    return { ok: clean };
  }

  private newVolume(path: string): ModelMount {
    const volume = this.volumesMade++;
    this.volumes.add(volume);
    return { path, volume, mode: 'rw', origin: 'created' };
  }

  private live(ref: Resolved): ModelContainer | undefined {
    return 'id' in ref ? this.containers.get(ref.id) : undefined;
  }

  private existing(ref: Resolved): ModelContainer | { error: string } {
    if ('malformed' in ref) return { error: malformedError(ref, 'ERR_CONTAINER_NOT_FOUND') };
    return this.live(ref) ?? { error: 'ERR_CONTAINER_NOT_FOUND' };
  }

  /** A container whose volumes may change: it exists and is not mounted. */
  private changeable(ref: Resolved): ModelContainer | { error: string } {
    const container = this.live(ref);
    if (!container) return { error: 'ERR_CONTAINER_NOT_FOUND' };
    return container.mounted ? { error: 'ERR_CONTAINER_MOUNTED' } : container;
  }

  private existingVolume(ref: Resolved): number | { error: string } {
    if ('malformed' in ref) return { error: malformedError(ref, 'ERR_VOLUME_NOT_FOUND') };
    if ('unknown' in ref || !this.volumes.has(ref.id)) return { error: 'ERR_VOLUME_NOT_FOUND' };
    return ref.id;
  }
}

/** A malformed id given as it is: a string names nothing (Docker's "no such container"), a number is the wrong type. */
function malformedError(ref: { malformed: MalformedVariant }, notFound: 'ERR_CONTAINER_NOT_FOUND' | 'ERR_VOLUME_NOT_FOUND'): string {
  return ref.malformed === 'number' ? 'ERR_INVALID_ARGUMENT' : notFound;
}

/**
 * Whether a volume sits below one the container holds read-only that came from
 * elsewhere: its mount point would have to be made inside that read-only volume. The
 * volumes here never hold directories (fresh rootfs, fake mounter), so it never exists.
 */
function belowReadOnly(mounts: readonly ModelMount[]): boolean {
  return mounts.some((m) => {
    const parent = mounts.filter((p) => m.path.startsWith(`${p.path}/`)).sort((a, b) => b.path.length - a.path.length)[0];
    if (!parent || parent.mode !== 'ro') return false;
    const same = parent.origin === 'created' || m.origin === 'created' ? parent.origin === m.origin : parent.origin.from === m.origin.from;
    return !same;
  });
}

function resolve(ref: Ref, live: readonly number[], idle: readonly number[], made: number): Resolved {
  const nth = (n: number, from: readonly number[]) => from[n % from.length];
  if (ref.kind === 'malformed') return { malformed: ref.variant, base: made === 0 ? undefined : ref.n % made };
  let id: number | undefined;
  if (ref.kind === 'live') id = nth(ref.n, live);
  else if (ref.kind === 'idle') id = nth(ref.n, idle) ?? nth(ref.n, live);
  else if (ref.kind === 'any' && made > 0) id = ref.n % made;
  return id === undefined ? { unknown: true } : { id };
}

function sameRef(a: Resolved, b: Resolved): boolean {
  if ('id' in a && 'id' in b) return a.id === b.id;
  return 'unknown' in a && 'unknown' in b;
}

function copy(c: ModelContainer): ModelContainer {
  return { ...c, volumes: c.volumes.map((v) => ({ ...v, origin: v.origin === 'created' ? 'created' : { ...v.origin } })) };
}

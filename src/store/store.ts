import fs from 'node:fs/promises';
import { accessSync, existsSync, mkdirSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { ContainerVolumesError, isErrnoException } from '../errors.js';
import { debugStore } from '../debug.js';
import { checkId, isId } from '../rules/ids.js';
import { syncDirectory, writeFileAtomic, writeFileAtomicUndurable } from './atomic-file.js';
import { type ContainerConfig, parseConfig, serializeConfig } from './container-config.js';
import { assertLockHeld, withStoreLock } from './lock.js';
import { currentBootId } from './boot-id.js';
import { ReferenceIndex } from './reference-index.js';
import { removeTree } from './remove-tree.js';

const READ_BATCH = 64;
/** The directories every store has; `index/` is the reference index's, made when it is built. */
const LAYOUT = ['volumes', 'containers', 'pending', 'trash'] as const;

/**
 * The on-disk state under `root`:
 *
 *     volumes/<id>/          one directory per volume, holding the user's data only
 *     containers/<id>.json   one configuration per container (the source of truth)
 *     pending/<id>.json      volumes being created for a container, until its configuration names them
 *     index/                 which containers use each volume: derived, rebuildable (ReferenceIndex)
 *     trash/                 volumes being deleted (renamed here first, then removed)
 *     corrupt/               configurations that could not be read, moved aside by recover()
 *     lock                   the lock directory (lock.ts)
 *
 * Readers need no lock (every write is an atomic rename); writers run inside
 * `exclusive`.
 */
export class Store {
  /** Absolute; once open() has run, also free of symlinks, so it matches what mountinfo shows. */
  root: string;
  readonly index: ReferenceIndex;
  private ready: Promise<void> | undefined;
  /** Whether the layout was made once (by this Store), so that its absence now means damage. */
  private opened = false;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.index = new ReferenceIndex(this.root);
  }

  volumeDir(volumeId: string): string {
    return path.join(this.root, 'volumes', checkId(volumeId, 'volume'));
  }

  private configFile(containerId: string): string {
    return path.join(this.root, 'containers', `${checkId(containerId, 'container')}.json`);
  }

  /**
   * Creates the layout, once per Store; idempotent across processes. A failed attempt
   * is retried next time. Takes no lock, so that reads are answered even where the lock
   * cannot be taken (a read-only file system): the reference index is made current by
   * `exclusive`, and read without it only when it is current (`indexIsCurrent`).
   */
  open(): Promise<void> {
    // A layout directory deleted under a live runtime is made again by the next call.
    if (this.ready !== undefined && this.opened && !this.layoutIntact()) this.ready = undefined;
    this.ready ??= this.createLayout()
      .catch((error: unknown) => {
        this.ready = undefined;
        if (error instanceof ContainerVolumesError) throw error;
        throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `cannot open the store at ${this.root}: ${(error as Error).message}`, {
          cause: error,
        });
      });
    return this.ready;
  }

  private async createLayout(): Promise<void> {
    await fs.mkdir(this.root, { recursive: true, mode: 0o711 });
    for (const dir of LAYOUT) {
      await fs.mkdir(path.join(this.root, dir), { recursive: true, mode: 0o700 });
    }
    this.root = await fs.realpath(this.root);
    this.opened = true;
  }

  /** A few stats, so that every call can afford it. */
  private layoutIntact(): boolean {
    return LAYOUT.every((dir) => existsSync(path.join(this.root, dir)));
  }

  /** Runs `fn` holding the store's lock, with the reference index checked current first. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    await this.open();
    return withStoreLock(this.root, async () => {
      await this.ensureIndex();
      return fn();
    }).catch((error: unknown) => this.failed(error));
  }

  /**
   * What a call that failed on one of the store's own files throws: ERR_STORE_UNAVAILABLE
   * naming the state directory, with the system error as its cause. The layout is
   * checked again by the next call, which makes what is missing.
   */
  private failed(error: unknown): never {
    const file = (error as NodeJS.ErrnoException | undefined)?.path;
    if (error instanceof ContainerVolumesError || typeof file !== 'string' || !(file === this.root || file.startsWith(`${this.root}/`))) throw error;
    this.ready = undefined;
    this.index.forgetCurrent();
    throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `the store at ${this.root} failed: ${(error as Error).message}`, { cause: error });
  }

  /** Rebuilds the reference index unless it was built in this boot (another process may have rebuilt it meanwhile). */
  private async ensureIndex(): Promise<void> {
    if (!(await this.indexIsCurrent())) await this.rebuildIndex();
  }

  /** Whether the reference index was built in this boot: if not, only the configurations tell who uses a volume. */
  indexIsCurrent(): Promise<boolean> {
    return this.index.isCurrent(currentBootId());
  }

  /** Rebuilds the reference index from the configurations and the volume directories. */
  async rebuildIndex(): Promise<void> {
    assertLockHeld(this.root);
    const [configs, volumeIds] = await Promise.all([this.readAll(), this.volumeIdsOnDisk()]);
    await this.index.rebuild(configs, volumeIds, currentBootId(), path.join(this.root, 'trash', `index.${Date.now()}`), () => assertLockHeld(this.root));
  }

  /**
   * Makes the reference index agree with `configs`, just read under the lock: rebuilt
   * when it is not of this boot, otherwise completed where a crash left it short.
   */
  async repairIndex(configs: readonly ContainerConfig[]): Promise<void> {
    assertLockHeld(this.root);
    const volumeIds = await this.volumeIdsOnDisk();
    if (await this.index.isCurrent(currentBootId())) {
      const added = await this.index.repair(configs, volumeIds);
      if (added > 0) debugStore('repaired the reference index: %d entries added', added);
      return;
    }
    await this.index.rebuild(configs, volumeIds, currentBootId(), path.join(this.root, 'trash', `index.${Date.now()}`), () =>
      assertLockHeld(this.root),
    );
  }

  async readContainer(containerId: string): Promise<ContainerConfig> {
    const file = this.configFile(containerId);
    await this.open();
    return this.readConfig(containerId, file);
  }

  private async readConfig(containerId: string, file: string): Promise<ContainerConfig> {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) {
        throw new ContainerVolumesError('ERR_CONTAINER_NOT_FOUND', `no such container: ${containerId}`);
      }
      throw new ContainerVolumesError(
        'ERR_CORRUPT_CONFIG',
        `configuration ${file} of container ${containerId} cannot be read: ${(error as Error).message}`,
        { cause: error },
      );
    }
    return parseConfig(text, containerId, file, this.root);
  }

  /** Every container, oldest first. A file whose name is not `<uuid>.json` is not ours and is skipped. */
  async readAllContainers(): Promise<ContainerConfig[]> {
    await this.open();
    return this.readAll().catch((error: unknown) => this.failed(error));
  }

  /**
   * Every container that can be read, and the ids of those whose configuration is
   * corrupt with the error, for recover(): under the lock.
   */
  async readAllOrCorrupt(): Promise<{ configs: ContainerConfig[]; corrupt: { containerId: string; error: ContainerVolumesError }[] }> {
    const corrupt: { containerId: string; error: ContainerVolumesError }[] = [];
    const configs = await this.readAll((containerId, error) => corrupt.push({ containerId, error })).catch((error: unknown) => this.failed(error));
    return { configs, corrupt };
  }

  /** The id of every container, from the file names alone: nothing is read. */
  async listContainerIds(): Promise<string[]> {
    await this.open();
    return this.containerIdsOnDisk().catch((error: unknown) => this.failed(error));
  }

  private async containerIdsOnDisk(): Promise<string[]> {
    const names = await fs.readdir(path.join(this.root, 'containers'));
    return names.filter((n) => n.endsWith('.json') && isId(n.slice(0, -5))).map((n) => n.slice(0, -5));
  }

  private async readAll(onCorrupt?: (containerId: string, error: ContainerVolumesError) => void): Promise<ContainerConfig[]> {
    const ids = await this.containerIdsOnDisk();
    const configs: ContainerConfig[] = [];
    const read = (id: string) =>
      this.readConfig(id, this.configFile(id)).catch((error: unknown) => {
        if (onCorrupt && error instanceof ContainerVolumesError && error.code === 'ERR_CORRUPT_CONFIG') return void onCorrupt(id, error);
        return ifRemoved(error);
      });
    // In batches: all at once would run out of file descriptors on a large store.
    for (let i = 0; i < ids.length; i += READ_BATCH) {
      const batch = await Promise.all(ids.slice(i, i + READ_BATCH).map(read));
      configs.push(...batch.filter((config): config is ContainerConfig => config !== undefined));
    }
    return configs.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  /** Throws unless this process holds the store's lock (ERR_LOCK_FAILED once it was lost). */
  assertLocked(): void {
    assertLockHeld(this.root);
  }

  /**
   * Writes a container's configuration. `previous` is what it replaces (none for a new
   * container): the index learns of volumes it gains before the write and forgets those
   * it loses after, so the index never misses a use.
   */
  async writeContainer(config: ContainerConfig, previous?: ContainerConfig): Promise<void> {
    assertLockHeld(this.root);
    const before = new Set(previous?.volumes.map((v) => v.volumeId));
    const after = new Set(config.volumes.map((v) => v.volumeId));
    const gained = [...after].filter((id) => !before.has(id));
    this.index.add(config.id, gained);
    await writeFileAtomic(this.configFile(config.id), serializeConfig(config), {
      // A volume directory made for this configuration must be durable before it is named.
      syncFirst: gained.length > 0 ? [path.join(this.root, 'volumes')] : [],
      beforeRename: () => assertLockHeld(this.root),
    });
    assertLockHeld(this.root);
    this.index.remove(config.id, [...before].filter((id) => !after.has(id)));
    debugStore('wrote container %s', config.id);
  }

  /**
   * Moves a configuration that cannot be read to `corrupt/<id>.json.<time>`, for the
   * operator to inspect (or move back): the container is gone from the store, and the
   * volumes only it named are no longer protected from prune(). Resolves to where it went,
   * relative to the root.
   */
  async moveAside(containerId: string): Promise<string> {
    const dir = path.join(this.root, 'corrupt');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const name = `${checkId(containerId, 'container')}.json.${Date.now()}`;
    assertLockHeld(this.root);
    renameSync(this.configFile(containerId), path.join(dir, name));
    await syncDirectory(path.join(this.root, 'containers'));
    debugStore('moved the corrupt configuration of %s to corrupt/%s', containerId, name);
    return `corrupt/${name}`;
  }

  async deleteContainer(config: ContainerConfig): Promise<void> {
    assertLockHeld(this.root);
    unlinkSync(this.configFile(config.id));
    await syncDirectory(path.join(this.root, 'containers'));
    assertLockHeld(this.root);
    this.index.remove(config.id, config.volumes.map((v) => v.volumeId));
    debugStore('deleted container %s', config.id);
  }

  /**
   * Records the volumes about to be made for a container, before any is made: if the
   * process dies before the configuration names them, recover() and prune() know which
   * directories are half-created debris rather than volumes kept after their container
   * went. Not fsynced, since only a power loss could lose it, and after one the index is
   * rebuilt from the configurations, which lists such a volume as unused: prune() then
   * deletes it (recover() just does not report it).
   */
  async recordPending(containerId: string, volumeIds: readonly string[]): Promise<void> {
    assertLockHeld(this.root);
    writeFileAtomicUndurable(this.pendingFile(containerId), `${JSON.stringify(volumeIds)}\n`);
  }

  /** The configuration now names the volumes (or they were discarded): the record is done with. */
  async clearPending(containerId: string): Promise<void> {
    assertLockHeld(this.root);
    rmSync(this.pendingFile(containerId), { force: true });
  }

  /** Every pending record; an entry that is not a valid record is returned with no volume ids, to be cleared. */
  async readPending(): Promise<{ containerId: string; volumeIds: string[] }[]> {
    const names = await fs.readdir(path.join(this.root, 'pending'));
    const records: { containerId: string; volumeIds: string[] }[] = [];
    for (const name of names) {
      const containerId = name.slice(0, -'.json'.length);
      if (!name.endsWith('.json') || !isId(containerId)) continue;
      let volumeIds: string[] = [];
      try {
        const parsed: unknown = JSON.parse(await fs.readFile(path.join(this.root, 'pending', name), 'utf8'));
        if (Array.isArray(parsed)) volumeIds = parsed.filter(isId);
      } catch (error) {
        debugStore('pending record %s is unreadable: %s', name, (error as Error).message);
      }
      records.push({ containerId, volumeIds });
    }
    return records;
  }

  private pendingFile(containerId: string): string {
    return path.join(this.root, 'pending', `${checkId(containerId, 'container')}.json`);
  }

  /** Makes an empty volume directory for an id from `recordPending`; `writeContainer` makes it durable before naming it. */
  async createVolumeDir(volumeId: string): Promise<void> {
    assertLockHeld(this.root);
    mkdirSync(this.volumeDir(volumeId), { mode: 0o755 });
    debugStore('created volume %s', volumeId);
  }

  async volumeExists(volumeId: string): Promise<boolean> {
    return exists(this.volumeDir(volumeId));
  }

  /** Every volume directory; anything under volumes/ whose name is not a uuid is not ours and is skipped. */
  async listVolumeIds(): Promise<string[]> {
    await this.open();
    return this.volumeIdsOnDisk().catch((error: unknown) => this.failed(error));
  }

  private async volumeIdsOnDisk(): Promise<string[]> {
    return (await fs.readdir(path.join(this.root, 'volumes'))).filter(isId).sort();
  }

  /** When the volume was created: the birth time of its directory. */
  async volumeCreatedAt(volumeId: string): Promise<string> {
    const stat = await fs.stat(this.volumeDir(volumeId));
    return new Date(stat.birthtimeMs || stat.ctimeMs).toISOString();
  }

  /**
   * Deletes a volume and its data. The directory is first renamed into trash/ so the
   * volume vanishes from the store in one atomic step; a crash during the slow
   * recursive removal, or a removal that fails, leaves only trash behind, which
   * recover() empties.
   */
  async deleteVolumeDir(volumeId: string): Promise<void> {
    assertLockHeld(this.root);
    const trashed = path.join(this.trashDir(), `${checkId(volumeId, 'volume')}.${Date.now()}`);
    try {
      renameSync(this.volumeDir(volumeId), trashed);
    } catch (error) {
      // Already gone is what we wanted: a configuration may outlive a volume lost by hand.
      if (isErrnoException(error, 'ENOENT')) return;
      if (!isErrnoException(error, 'EBUSY')) throw error;
      throw new ContainerVolumesError('ERR_VOLUME_BUSY', `volume ${volumeId} cannot be deleted: its directory is a mount point`, {
        cause: error,
      });
    }
    this.index.forget(volumeId, { refs: true });
    debugStore('deleted volume %s', volumeId);
    await this.emptyTrash(path.basename(trashed));
  }

  trashDir(): string {
    return path.join(this.root, 'trash');
  }

  /**
   * Deletes `trash/<name>` with everything under it; resolves to whether it is gone.
   * The volume it was is already out of the store, so a failure (something mounted
   * inside, an I/O error) is only logged: recover() tries again.
   */
  async emptyTrash(name: string): Promise<boolean> {
    try {
      await removeTree(path.join(this.trashDir(), name), this.trashDir());
      return true;
    } catch (error) {
      debugStore('trash/%s stays: %s', name, (error as Error).message);
      return false;
    }
  }
}

/** A container removed by another process between the listing and the read is simply gone. */
function ifRemoved(error: unknown): undefined {
  if (error instanceof ContainerVolumesError && error.code === 'ERR_CONTAINER_NOT_FOUND') return undefined;
  throw error;
}

async function exists(file: string): Promise<boolean> {
  try {
    accessSync(file);
    return true;
  } catch (error) {
    if (isErrnoException(error, 'ENOENT')) return false;
    throw error;
  }
}

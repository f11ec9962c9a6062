import fs from 'node:fs/promises';
import path from 'node:path';
import { ContainerVolumesError, isErrnoException } from '../errors.js';
import { debugStore } from '../debug.js';
import { checkId, isId, newId } from '../spec/ids.js';
import { syncDirectory, writeFileAtomic } from './atomic-file.js';
import { type ContainerConfig, parseConfig, serializeConfig } from './container-config.js';
import { assertLockHeld, withStoreLock } from './lock.js';

const READ_BATCH = 64;

/**
 * The on-disk state under `root`:
 *
 *     volumes/<id>/          one directory per volume, holding the user's data only
 *     containers/<id>.json   one configuration per container (the source of truth)
 *     trash/                 volumes being deleted (renamed here first, then removed)
 *     lock                   proper-lockfile's lock directory
 *
 * Readers need no lock (every write is an atomic rename); writers run inside
 * `exclusive`.
 */
export class Store {
  /** Absolute; once open() has run, also free of symlinks, so it matches what mountinfo shows. */
  root: string;
  private ready: Promise<void> | undefined;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  volumeDir(volumeId: string): string {
    return path.join(this.root, 'volumes', checkId(volumeId, 'volume'));
  }

  private configFile(containerId: string): string {
    return path.join(this.root, 'containers', `${checkId(containerId, 'container')}.json`);
  }

  /** Creates the layout once per Store; idempotent across processes. A failed attempt is retried next time. */
  open(): Promise<void> {
    this.ready ??= this.createLayout().catch((error: unknown) => {
      this.ready = undefined;
      throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `cannot open the store at ${this.root}: ${(error as Error).message}`, {
        cause: error,
      });
    });
    return this.ready;
  }

  private async createLayout(): Promise<void> {
    await fs.mkdir(this.root, { recursive: true, mode: 0o711 });
    for (const dir of ['volumes', 'containers', 'trash']) {
      await fs.mkdir(path.join(this.root, dir), { recursive: true, mode: 0o700 });
    }
    this.root = await fs.realpath(this.root);
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    await this.open();
    return withStoreLock(this.root, fn);
  }

  async readContainer(containerId: string): Promise<ContainerConfig> {
    const file = this.configFile(containerId);
    await this.open();
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
    const names = await fs.readdir(path.join(this.root, 'containers'));
    const ids = names.filter((n) => n.endsWith('.json') && isId(n.slice(0, -5))).map((n) => n.slice(0, -5));
    const configs: ContainerConfig[] = [];
    // In batches: all at once would run out of file descriptors on a large store.
    for (let i = 0; i < ids.length; i += READ_BATCH) {
      const batch = await Promise.all(ids.slice(i, i + READ_BATCH).map((id) => this.readContainer(id).catch(ifRemoved)));
      configs.push(...batch.filter((config): config is ContainerConfig => config !== undefined));
    }
    return configs.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  /** Throws unless this process holds the store's lock (ERR_LOCK_FAILED once it was lost). */
  assertLocked(): void {
    assertLockHeld(this.root);
  }

  async writeContainer(config: ContainerConfig): Promise<void> {
    assertLockHeld(this.root);
    await writeFileAtomic(this.configFile(config.id), serializeConfig(config));
    debugStore('wrote container %s', config.id);
  }

  async deleteContainer(containerId: string): Promise<void> {
    assertLockHeld(this.root);
    await fs.unlink(this.configFile(containerId));
    await syncDirectory(path.join(this.root, 'containers'));
    debugStore('deleted container %s', containerId);
  }

  /** Makes an empty volume directory and returns its new id; `syncVolumes` makes it durable. */
  async createVolumeDir(): Promise<string> {
    assertLockHeld(this.root);
    const id = newId();
    await fs.mkdir(this.volumeDir(id), { mode: 0o755 });
    debugStore('created volume %s', id);
    return id;
  }

  /** Makes new volume directories durable before a configuration that names them is written. */
  async syncVolumes(): Promise<void> {
    await syncDirectory(path.join(this.root, 'volumes'));
  }

  async volumeExists(volumeId: string): Promise<boolean> {
    return exists(this.volumeDir(volumeId));
  }

  /** Every volume directory; anything under volumes/ whose name is not a uuid is not ours and is skipped. */
  async listVolumeIds(): Promise<string[]> {
    await this.open();
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
   * recursive removal leaves only trash behind.
   */
  async deleteVolumeDir(volumeId: string): Promise<void> {
    assertLockHeld(this.root);
    const trashed = path.join(this.root, 'trash', `${checkId(volumeId, 'volume')}.${Date.now()}`);
    try {
      await fs.rename(this.volumeDir(volumeId), trashed);
    } catch (error) {
      // Already gone is what we wanted: a configuration may outlive a volume lost by hand.
      if (isErrnoException(error, 'ENOENT')) return;
      if (!isErrnoException(error, 'EBUSY')) throw error;
      throw new ContainerVolumesError('ERR_VOLUME_BUSY', `volume ${volumeId} cannot be deleted: its directory is a mount point`, {
        cause: error,
      });
    }
    await fs.rm(trashed, { recursive: true, force: true });
    debugStore('deleted volume %s', volumeId);
  }
}

/** A container removed by another process between the listing and the read is simply gone. */
function ifRemoved(error: unknown): undefined {
  if (error instanceof ContainerVolumesError && error.code === 'ERR_CONTAINER_NOT_FOUND') return undefined;
  throw error;
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch (error) {
    if (isErrnoException(error, 'ENOENT')) return false;
    throw error;
  }
}

import fs from 'node:fs/promises';
import path from 'node:path';
import { isErrnoException } from '../errors.js';
import { debugStore } from '../debug.js';
import { isId } from '../spec/ids.js';
import type { ContainerConfig } from './container-config.js';

/**
 * Which containers may use each volume, kept on disk so that a volume's users are
 * found without reading every configuration:
 *
 *     index/refs/<volumeId>/<containerId>   an empty file per use
 *     index/unused/<volumeId>               a volume whose last user went away (prune's candidates)
 *     index/boot-id                         the boot the index was built in
 *
 * It is derived, never the source of truth: an entry is added before the
 * configuration that names the volume is written and removed after the configuration
 * stops naming it, so the entries are always a superset of the real uses, and every
 * reader confirms an entry against the configuration before trusting it. A process
 * killed between the two steps leaves only a stale entry. The files are not fsynced:
 * after a power loss the boot id differs and the whole index is rebuilt from the
 * configurations, as it is when it is missing (a store made by an older version) and
 * on every `recover()`.
 */
export class ReferenceIndex {
  private readonly dir: string;
  private current = false;

  constructor(root: string) {
    this.dir = path.join(root, 'index');
  }

  /** Whether the index was built in this boot; checked once per process, under the store's lock. */
  async isCurrent(bootId: string): Promise<boolean> {
    if (this.current) return true;
    try {
      this.current = (await fs.readFile(path.join(this.dir, 'boot-id'), 'utf8')) === bootId;
    } catch (error) {
      if (!isErrnoException(error, 'ENOENT')) throw error;
    }
    return this.current;
  }

  /**
   * Builds the index afresh from `configs` and the volume directories that exist, then
   * swaps it in with one rename; the old one goes to `trash`.
   */
  async rebuild(configs: readonly ContainerConfig[], volumeIds: readonly string[], bootId: string, trash: string): Promise<void> {
    const fresh = `${this.dir}.new`;
    await fs.rm(fresh, { recursive: true, force: true });
    await fs.mkdir(path.join(fresh, 'refs'), { recursive: true, mode: 0o700 });
    await fs.mkdir(path.join(fresh, 'unused'), { mode: 0o700 });
    const used = new Set<string>();
    for (const config of configs) {
      for (const { volumeId } of config.volumes) {
        used.add(volumeId);
        await fs.mkdir(path.join(fresh, 'refs', volumeId), { recursive: true });
        await fs.writeFile(path.join(fresh, 'refs', volumeId, config.id), '');
      }
    }
    for (const volumeId of volumeIds) if (!used.has(volumeId)) await fs.writeFile(path.join(fresh, 'unused', volumeId), '');
    await fs.writeFile(path.join(fresh, 'boot-id'), bootId);
    await fs.rename(this.dir, trash).catch((error: unknown) => {
      if (!isErrnoException(error, 'ENOENT')) throw error;
    });
    await fs.rename(fresh, this.dir);
    await fs.rm(trash, { recursive: true, force: true });
    this.current = true;
    debugStore('rebuilt the reference index: %d containers, %d volumes', configs.length, volumeIds.length);
  }

  /** Records that `containerId` uses `volumeIds`; call before writing the configuration. */
  async add(containerId: string, volumeIds: readonly string[]): Promise<void> {
    await Promise.all(
      volumeIds.map(async (volumeId) => {
        const dir = path.join(this.dir, 'refs', volumeId);
        await fs.mkdir(dir, { recursive: true });
        await fs.writeFile(path.join(dir, containerId), '');
      }),
    );
  }

  /**
   * Forgets that `containerId` uses `volumeIds`; call after the configuration stopped
   * naming them. A volume left with no user becomes a prune candidate.
   */
  async remove(containerId: string, volumeIds: readonly string[]): Promise<void> {
    await Promise.all(
      volumeIds.map(async (volumeId) => {
        const dir = path.join(this.dir, 'refs', volumeId);
        await fs.rm(path.join(dir, containerId), { force: true });
        try {
          await fs.rmdir(dir);
        } catch (error) {
          if (isErrnoException(error, 'ENOTEMPTY') || isErrnoException(error, 'ENOENT')) return;
          throw error;
        }
        await fs.writeFile(path.join(this.dir, 'unused', volumeId), '');
      }),
    );
  }

  /** The containers that may use `volumeId` (a superset: confirm each against its configuration). */
  async candidates(volumeId: string): Promise<string[]> {
    try {
      return (await fs.readdir(path.join(this.dir, 'refs', volumeId))).filter(isId);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return [];
      throw error;
    }
  }

  /** Volumes whose last user went away: the only ones prune needs to look at. */
  async unused(): Promise<string[]> {
    try {
      return (await fs.readdir(path.join(this.dir, 'unused'))).filter(isId);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return [];
      throw error;
    }
  }

  /** Drops every entry of a deleted volume, or a prune candidate that turned out to be used. */
  async forget(volumeId: string, { refs }: { refs: boolean }): Promise<void> {
    if (refs) await fs.rm(path.join(this.dir, 'refs', volumeId), { recursive: true, force: true });
    await fs.rm(path.join(this.dir, 'unused', volumeId), { force: true });
  }
}

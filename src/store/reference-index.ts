import fs from 'node:fs/promises';
import { existsSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { isErrnoException } from '../errors.js';
import { debugStore } from '../debug.js';
import { isId } from '../rules/ids.js';
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
/** How many index files `rebuild` writes between two turns of the event loop. */
const YIELD_EVERY = 512;

export class ReferenceIndex {
  private readonly dir: string;
  private current = false;

  constructor(root: string) {
    this.dir = path.join(root, 'index');
  }

  /**
   * Whether the index was built in this boot; read once per process, then only checked
   * to be still there (an index deleted under a live process must be rebuilt, not read
   * as empty).
   */
  async isCurrent(bootId: string): Promise<boolean> {
    if (this.current && existsSync(path.join(this.dir, 'boot-id'))) return true;
    this.current = false;
    try {
      this.current = (await fs.readFile(path.join(this.dir, 'boot-id'), 'utf8')) === bootId;
    } catch (error) {
      if (!isErrnoException(error, 'ENOENT')) throw error;
    }
    return this.current;
  }

  /** After a failure on the store's files: read the boot id again next time. */
  forgetCurrent(): void {
    this.current = false;
  }

  /**
   * Builds the index afresh from `configs` and the volume directories that exist, then
   * swaps it in with one rename; the old one goes to `trash`. `beforeSwap` runs right
   * before, and can stop it by throwing.
   */
  async rebuild(
    configs: readonly ContainerConfig[],
    volumeIds: readonly string[],
    bootId: string,
    trash: string,
    beforeSwap: () => void,
  ): Promise<void> {
    const fresh = `${this.dir}.new`;
    await fs.rm(fresh, { recursive: true, force: true });
    await fs.mkdir(path.join(fresh, 'refs'), { recursive: true, mode: 0o700 });
    await fs.mkdir(path.join(fresh, 'unused'), { mode: 0o700 });
    const used = new Set<string>();
    let written = 0;
    // Synchronous small writes (see `add`), with a turn of the event loop now and then,
    // so that a large store does not hold up the embedding process in one stretch.
    const wrote = async () => {
      if (++written % YIELD_EVERY === 0) await new Promise((resolve) => setImmediate(resolve));
    };
    for (const config of configs) {
      for (const { volumeId } of config.volumes) {
        if (!used.has(volumeId)) mkdirSync(path.join(fresh, 'refs', volumeId));
        used.add(volumeId);
        writeFileSync(path.join(fresh, 'refs', volumeId, config.id), '');
        await wrote();
      }
    }
    for (const volumeId of volumeIds) {
      if (used.has(volumeId)) continue;
      writeFileSync(path.join(fresh, 'unused', volumeId), '');
      await wrote();
    }
    await fs.writeFile(path.join(fresh, 'boot-id'), bootId);
    // Synchronous from the check on: an index built by a process that lost its lock
    // could lack uses made since by the new holder.
    beforeSwap();
    try {
      renameSync(this.dir, trash);
    } catch (error) {
      if (!isErrnoException(error, 'ENOENT')) throw error;
    }
    renameSync(fresh, this.dir);
    await fs.rm(trash, { recursive: true, force: true });
    this.current = true;
    debugStore('rebuilt the reference index: %d containers, %d volumes', configs.length, volumeIds.length);
  }

  /**
   * Brings a current index in line with `configs` and the volume directories by adding
   * what is missing: a use not listed (only a hand-edited index can lack one), or a
   * volume nobody uses that is not a prune candidate (a process killed between writing a
   * configuration that dropped it and recording it here). Stale entries stay: readers
   * drop them. Reads one directory per volume and writes only what is missing, where
   * `rebuild` writes a file per use. Returns how many entries it added.
   */
  async repair(configs: readonly ContainerConfig[], volumeIds: readonly string[]): Promise<number> {
    const users = new Map<string, string[]>();
    for (const config of configs) for (const { volumeId } of config.volumes) users.set(volumeId, [...(users.get(volumeId) ?? []), config.id]);
    const unused = new Set(this.unused());
    let added = 0;
    let visited = 0;
    for (const volumeId of volumeIds) {
      if (++visited % YIELD_EVERY === 0) await new Promise((resolve) => setImmediate(resolve));
      const named = users.get(volumeId);
      if (named === undefined) {
        if (!unused.has(volumeId)) {
          writeFileSync(path.join(this.dir, 'unused', volumeId), '');
          added++;
        }
        continue;
      }
      const listed = new Set(this.candidates(volumeId));
      const missing = named.filter((id) => !listed.has(id));
      for (const id of missing) this.add(id, [volumeId]);
      added += missing.length;
    }
    return added;
  }

  /**
   * Records that `containerId` uses `volumeIds`; call before writing the configuration.
   * Empty files in the page cache: made synchronously, as the store's small files are
   * (see atomic-file.ts).
   */
  add(containerId: string, volumeIds: readonly string[]): void {
    for (const volumeId of volumeIds) {
      const dir = path.join(this.dir, 'refs', volumeId);
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, containerId), '');
    }
  }

  /**
   * Forgets that `containerId` uses `volumeIds`; call after the configuration stopped
   * naming them. A volume left with no user becomes a prune candidate.
   */
  remove(containerId: string, volumeIds: readonly string[]): void {
    for (const volumeId of volumeIds) {
      const dir = path.join(this.dir, 'refs', volumeId);
      rmSync(path.join(dir, containerId), { force: true });
      try {
        rmdirSync(dir);
      } catch (error) {
        if (isErrnoException(error, 'ENOTEMPTY') || isErrnoException(error, 'ENOENT')) continue;
        throw error;
      }
      writeFileSync(path.join(this.dir, 'unused', volumeId), '');
    }
  }

  /** The containers that may use `volumeId` (a superset: confirm each against its configuration). */
  candidates(volumeId: string): string[] {
    try {
      return readdirSync(path.join(this.dir, 'refs', volumeId)).filter(isId);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return [];
      throw error;
    }
  }

  /** Volumes whose last user went away: the only ones prune needs to look at. */
  unused(): string[] {
    try {
      return readdirSync(path.join(this.dir, 'unused')).filter(isId);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return [];
      throw error;
    }
  }

  /** Drops every entry of a deleted volume, or a prune candidate that turned out to be used. */
  forget(volumeId: string, { refs }: { refs: boolean }): void {
    if (refs) rmSync(path.join(this.dir, 'refs', volumeId), { recursive: true, force: true });
    rmSync(path.join(this.dir, 'unused', volumeId), { force: true });
  }
}

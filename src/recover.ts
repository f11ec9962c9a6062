import fs from 'node:fs/promises';
import path from 'node:path';
import type { Context } from './context.js';
import { debugRuntime } from './debug.js';
import { isErrnoException } from './errors.js';
import { recoverMounts } from './recover-mounts.js';
import { currentBootId } from './store/boot-id.js';
import type { ContainerConfig } from './store/container-config.js';
import { isAlive } from './process-alive.js';

/** What `recover()` found and did. Empty lists mean the host already matched the configurations. */
export interface RecoveryReport {
  /** Containers marked unmounted because the host rebooted since they were mounted (no mount survives a reboot). */
  rebooted: string[];
  /** Transient handler containers whose process is gone, removed. */
  removedHandlers: string[];
  /** Mounts of the store's volumes that no configuration wants there (or stacked twice), detached. */
  unmounted: { containerId: string; path: string }[];
  /** Mounts of containers meant to be mounted that were missing or wrong, made again. */
  remounted: { containerId: string; path: string }[];
  /** Volume directories made by a create that never completed, deleted. */
  removedVolumes: string[];
  /** Leftovers of interrupted writes and deletes (paths relative to the store's root), deleted. */
  removedFiles: string[];
  /**
   * Containers whose mounts could not be brought in line (all of a rootfs's containers
   * at once), with the error's code and message; recover() went on with the others.
   */
  failed: { containerId: string; code: string; message: string }[];
}

/**
 * Brings the store and the host's mounts in line with the configurations, after a
 * crash or a reboot. Runs under the store's lock. Idempotent: a second run finds
 * nothing to do. A configuration that cannot be read stops it (ERR_CORRUPT_CONFIG)
 * before anything is deleted, since that configuration may name a volume.
 */
export async function recoverStore(ctx: Context): Promise<RecoveryReport> {
  const report: RecoveryReport = { rebooted: [], removedHandlers: [], unmounted: [], remounted: [], removedVolumes: [], removedFiles: [], failed: [] };
  let configs = await ctx.store.readAllContainers();
  report.removedFiles = await removeDebris(ctx);

  const boot = currentBootId();
  const kept: ContainerConfig[] = [];
  for (const config of configs) {
    if (config.handler && !(config.handler.bootId === boot && isAlive(config.handler.pid))) {
      // Its mounts, if any, lived in the handler's own mount namespace, gone with it.
      await ctx.store.deleteContainer(config);
      report.removedHandlers.push(config.id);
      continue;
    }
    if (config.mounted && config.mountedInBoot !== undefined && config.mountedInBoot !== boot) {
      const { mountedInBoot: _, ...reset } = { ...config, mounted: false };
      await ctx.store.writeContainer(reset, config);
      report.rebooted.push(config.id);
      kept.push(reset);
      continue;
    }
    kept.push(config);
  }
  configs = kept;

  const named = new Set(configs.flatMap((c) => c.volumes.map((v) => v.volumeId)));
  for (const { containerId, volumeIds } of await ctx.store.readPending()) {
    for (const volumeId of volumeIds) {
      if (named.has(volumeId) || !(await ctx.store.volumeExists(volumeId))) continue;
      await ctx.store.deleteVolumeDir(volumeId);
      report.removedVolumes.push(volumeId);
    }
    await ctx.store.clearPending(containerId);
  }
  await ctx.store.repairIndex(configs);

  await ctx.mounter.recover?.();
  await recoverMounts(ctx, configs, report);
  debugRuntime('recovered: %o', report);
  return report;
}

/**
 * Temporary files of interrupted atomic writes, trash of interrupted deletes, a
 * half-built index. Trash with something mounted inside stays: deleting it would walk
 * into the mount.
 */
async function removeDebris(ctx: Context): Promise<string[]> {
  const root = ctx.store.root;
  const removed: string[] = [];
  for (const dir of ['containers', 'pending']) {
    for (const name of await fs.readdir(path.join(root, dir))) {
      if (!(name.startsWith('.') && name.endsWith('.tmp'))) continue;
      await fs.rm(path.join(root, dir, name), { force: true });
      removed.push(`${dir}/${name}`);
    }
  }
  for (const name of await fs.readdir(path.join(root, 'trash'))) {
    if ((await ctx.mounter.list(path.join(root, 'trash', name))).length > 0) {
      debugRuntime('recover keeps trash/%s: something is mounted inside it', name);
      continue;
    }
    await fs.rm(path.join(root, 'trash', name), { recursive: true, force: true });
    removed.push(`trash/${name}`);
  }
  try {
    await fs.rm(path.join(root, 'index.new'), { recursive: true });
    removed.push('index.new');
  } catch (error) {
    if (!isErrnoException(error, 'ENOENT')) throw error;
  }
  return removed;
}

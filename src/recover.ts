import fs from 'node:fs/promises';
import path from 'node:path';
import type { Context } from './context.js';
import { debugRuntime } from './debug.js';
import { isErrnoException } from './errors.js';
import { applyPlan, mountedThere, planMounts } from './mount-plan.js';
import type { MountedVolume, MountRequest } from './mounter/mounter.js';
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
}

/** How many mounts stacked on one path recover() peels before it gives up on that path. */
const MAX_STACKED = 16;

/**
 * Brings the store and the host's mounts in line with the configurations, after a
 * crash or a reboot. Runs under the store's lock. Idempotent: a second run finds
 * nothing to do. A configuration that cannot be read stops it (ERR_CORRUPT_CONFIG)
 * before anything is deleted, since that configuration may name a volume.
 */
export async function recoverStore(ctx: Context): Promise<RecoveryReport> {
  const report: RecoveryReport = { rebooted: [], removedHandlers: [], unmounted: [], remounted: [], removedVolumes: [], removedFiles: [] };
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
  await ctx.store.rebuildIndex();

  const volumesDir = path.join(ctx.store.root, 'volumes');
  for (const config of configs) await recoverMounts(ctx, config, volumesDir, report);
  debugRuntime('recovered: %o', report);
  return report;
}

async function recoverMounts(ctx: Context, config: ContainerConfig, volumesDir: string, report: RecoveryReport): Promise<void> {
  const plan = planMounts(config, (id) => ctx.store.volumeDir(id));
  const ours = (await ctx.mounter.list(config.rootfs)).filter((m) => isStoreVolume(m, volumesDir));
  if (!config.mounted) {
    if (ours.length > 0) await detachAll(ctx, config, volumesDir, report);
    return;
  }
  const wrong = await hasStrayOrWrong(ours, plan);
  if (wrong) await detachAll(ctx, config, volumesDir, report);
  const present = wrong ? [] : ours;
  const missing: MountRequest[] = [];
  for (const request of plan) if ((await mountedThere(present, request))?.mode !== request.mode) missing.push(request);
  if (missing.length === 0) return;
  await applyPlan(ctx.mounter, plan, () => ctx.store.assertLocked());
  for (const { path: p } of missing) report.remounted.push({ containerId: config.id, path: p });
}

/** Anything of ours beyond exactly one right mount per planned path: stacked, stray, or the wrong mode. */
async function hasStrayOrWrong(ours: readonly MountedVolume[], plan: readonly MountRequest[]): Promise<boolean> {
  const paths = new Set<string>();
  for (const m of ours) {
    if (paths.has(m.path)) return true;
    paths.add(m.path);
    const request = plan.find((r) => r.path === m.path);
    if (!request || (await mountedThere([m], request))?.mode !== request.mode) return true;
  }
  return false;
}

/** Detaches every mount of the store's volumes under the rootfs, deepest and topmost first, peeling stacks. */
async function detachAll(ctx: Context, config: ContainerConfig, volumesDir: string, report: RecoveryReport): Promise<void> {
  for (let round = 0; round < MAX_STACKED; round++) {
    const ours = (await ctx.mounter.list(config.rootfs)).filter((m) => isStoreVolume(m, volumesDir));
    if (ours.length === 0) return;
    ctx.store.assertLocked();
    // One per path per round: unmounting a path detaches only its topmost mount.
    const targets = [...new Map(ours.map((m) => [m.path, { rootfs: config.rootfs, path: m.path }])).values()].reverse();
    if (ctx.mounter.unmountAll) await ctx.mounter.unmountAll(targets);
    else for (const target of targets) await ctx.mounter.unmount(target);
    for (const { path: p } of targets) report.unmounted.push({ containerId: config.id, path: p });
  }
}

function isStoreVolume(mount: MountedVolume, volumesDir: string): boolean {
  return mount.source !== undefined && path.dirname(mount.source) === volumesDir;
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

import fs from 'node:fs/promises';
import path from 'node:path';
import type { Context } from './context.js';
import { debugRuntime } from './debug.js';
import { ContainerVolumesError, isErrnoException } from './errors.js';
import { applyPlan, isComplete, mountedThere, planMounts } from './mount-plan.js';
import type { MountedVolume, MountRequest } from './mounter/mounter.js';
import { currentBootId } from './store/boot-id.js';
import { removeTree } from './store/remove-tree.js';
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

/** How many mounts stacked on one path recover() peels before it gives up on that path. */
const MAX_STACKED = 16;

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
  const volumesDir = path.join(ctx.store.root, 'volumes');
  for (const group of byRootfs(configs)) {
    try {
      await recoverRootfs(ctx, group, volumesDir, report);
    } catch (error) {
      // A lost lock, or an error without a code, stops it. A refusal concerns this rootfs
      // alone (a rootfs turned into a symlink, a mount the kernel refuses): say so, go on.
      if (!(error instanceof ContainerVolumesError) || error.code === 'ERR_LOCK_FAILED') throw error;
      for (const config of group) report.failed.push({ containerId: config.id, code: error.code, message: error.message });
    }
  }
  debugRuntime('recovered: %o', report);
  return report;
}

/** Containers grouped by rootfs: mounts under one rootfs are judged against all of its containers at once. */
function byRootfs(configs: readonly ContainerConfig[]): ContainerConfig[][] {
  const groups = new Map<string, ContainerConfig[]>();
  for (const config of configs) groups.set(config.rootfs, [...(groups.get(config.rootfs) ?? []), config]);
  return [...groups.values()];
}

/**
 * Under one rootfs, the store's volumes must be mounted exactly as the plans of its
 * containers meant to be mounted say, once each. Anything else (a stray, a stack, a
 * wrong mode, a half-made mount) and everything of ours there is detached; then the
 * plans are applied, making what is missing.
 */
async function recoverRootfs(ctx: Context, group: readonly ContainerConfig[], volumesDir: string, report: RecoveryReport): Promise<void> {
  const rootfs = (group[0] as ContainerConfig).rootfs;
  const mounted = group.filter((c) => c.mounted).map((config) => ({ config, plan: planMounts(config, (id) => ctx.store.volumeDir(id)) }));
  const ours = (await ctx.mounter.list(rootfs)).filter((m) => isStoreVolume(m, volumesDir));
  if (!(await allWanted(ours, mounted.flatMap((m) => m.plan)))) await detachAll(ctx, group, volumesDir, report);
  for (const { config, plan } of mounted) {
    for (const { path: p } of await applyPlan(ctx.mounter, plan, () => ctx.store.assertLocked())) {
      report.remounted.push({ containerId: config.id, path: p });
    }
  }
}

/** Whether every mount in `ours` is a complete mount of a distinct planned mount: the right volume, path and mode. */
async function allWanted(ours: readonly MountedVolume[], wanted: readonly MountRequest[]): Promise<boolean> {
  const left = [...wanted];
  for (const m of ours) {
    let match = -1;
    for (const [i, request] of left.entries()) {
      if (request.path === m.path && request.mode === m.mode && isComplete(m) && (await mountedThere([m], request))) {
        match = i;
        break;
      }
    }
    if (match === -1) return false;
    left.splice(match, 1);
  }
  return true;
}

/** Detaches every mount of the store's volumes under the rootfs, deepest and topmost first, peeling stacks. */
async function detachAll(ctx: Context, group: readonly ContainerConfig[], volumesDir: string, report: RecoveryReport): Promise<void> {
  const rootfs = (group[0] as ContainerConfig).rootfs;
  // Reported against the container with a volume at the path, preferably one meant to be mounted.
  const ownerOf = (p: string) =>
    (group.find((c) => c.mounted && c.volumes.some((v) => v.path === p)) ?? group.find((c) => c.volumes.some((v) => v.path === p)) ?? group[0])!.id;
  for (let round = 0; round < MAX_STACKED; round++) {
    const ours = (await ctx.mounter.list(rootfs)).filter((m) => isStoreVolume(m, volumesDir));
    if (ours.length === 0) return;
    ctx.store.assertLocked();
    // One per path per round: unmounting a path detaches only its topmost mount.
    const targets = [...new Map(ours.map((m) => [m.path, { rootfs, path: m.path }])).values()].reverse();
    if (ctx.mounter.unmountAll) await ctx.mounter.unmountAll(targets);
    else for (const target of targets) await ctx.mounter.unmount(target);
    for (const { path: p } of targets) report.unmounted.push({ containerId: ownerOf(p), path: p });
  }
  throw new ContainerVolumesError('ERR_UNMOUNT_FAILED', `mounts under rootfs ${rootfs} are still there after ${MAX_STACKED} rounds of unmounting`);
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
    await removeTree(path.join(root, 'trash', name));
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

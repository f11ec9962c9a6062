import fs from 'node:fs/promises';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { debugRuntime } from '../debug.js';
import { isErrnoException } from '../errors.js';
import { recoverMounts } from '../plan/recover-mounts.js';
import { currentBootId } from '../store/boot-id.js';
import type { ContainerConfig } from '../store/container-config.js';
import { forgetIdleNamespaces, whereMounted } from '../namespaces/mounted-elsewhere.js';
import { namespaceAlive, runnerAlive } from '../handlers/handler-state.js';
import { stopNamespace } from '../handlers/namespace.js';
import { withoutGoneAttachments } from './attach.js';

/** What `recover()` found and did. Empty lists mean the host already matched the configurations. */
export interface RecoveryReport {
  /** Containers marked unmounted because the host rebooted since they were mounted (no mount survives a reboot). */
  rebooted: string[];
  /**
   * Containers marked unmounted because every process of the mount namespace they were
   * mounted in has exited: their mounts went with it.
   */
  namespaceGone: string[];
  /**
   * Containers attached (`attach`) to a process whose mount namespace has since ended,
   * or holds none of their volumes any more: those attachments are forgotten.
   */
  attachmentsGone: string[];
  /**
   * Transient handler containers whose process is gone, removed (after killing what was
   * left of a command handler's processes: its volumes are not deleted under them).
   */
  removedHandlers: string[];
  /** Mounts of the store's volumes that no configuration wants there (or stacked twice), detached. */
  unmounted: {
    /** The container whose volume it was (or would have been). */
    containerId: string;
    /** The container path. */
    path: string;
  }[];
  /** Mounts of containers meant to be mounted that were missing or wrong, made again. */
  remounted: {
    /** The container mounted again. */
    containerId: string;
    /** The container path. */
    path: string;
  }[];
  /** Volume directories made by a create that never completed, deleted. */
  removedVolumes: string[];
  /** Leftovers of interrupted writes and deletes (paths relative to the store's root), deleted. */
  removedFiles: string[];
  /**
   * Containers whose mounts could not be brought in line (all of a rootfs's containers
   * at once), and containers whose configuration cannot be read (ERR_CORRUPT_CONFIG:
   * moved aside to `corrupt/`), with the error's code and message; recover() went on
   * with the others.
   */
  failed: {
    /** The container concerned. */
    containerId: string;
    /** The error's code. */
    code: string;
    /** The error's message. */
    message: string;
  }[];
}

/**
 * Brings the store and the host's mounts in line with the configurations, after a
 * crash or a reboot. Runs under the store's lock. Idempotent: a second run finds
 * nothing to do. A configuration that cannot be read (a 0-byte file after a power loss)
 * is moved aside to `corrupt/` and reported in `failed`; since it may have named a
 * half-created volume, none is deleted in that run.
 */
export async function recoverStore(ctx: Context): Promise<RecoveryReport> {
  const report: RecoveryReport = { rebooted: [], namespaceGone: [], attachmentsGone: [], removedHandlers: [], unmounted: [], remounted: [], removedVolumes: [], removedFiles: [], failed: [] };
  const read = await ctx.store.readAllOrCorrupt();
  const corrupt = read.corrupt;
  let configs = read.configs;
  for (const { containerId, error } of corrupt) {
    const movedTo = await ctx.store.moveAside(containerId);
    report.failed.push({ containerId, code: error.code, message: `${error.message}; moved to ${movedTo}` });
  }
  report.removedFiles = await removeDebris(ctx);

  const boot = currentBootId();
  const kept: ContainerConfig[] = [];
  const elsewhere = new Set<string>();
  for (let config of configs) {
    const attachedOnly = await withoutGoneAttachments(ctx, config);
    if (attachedOnly !== undefined) {
      await ctx.store.writeContainer(attachedOnly, config);
      report.attachmentsGone.push(config.id);
      config = attachedOnly;
    }
    if (config.handler && !runnerAlive(config.handler)) {
      // Its processes die with their runner, but not at the same instant: until they are
      // gone, they may use the volumes, which the container protects.
      const { namespace } = config.handler;
      if (namespace && namespaceAlive(config.handler) && !(await stopNamespace(namespace))) {
        const message = `the processes of handler container ${config.id} (whose process ${config.handler.pid} is gone) did not die when killed`;
        report.failed.push({ containerId: config.id, code: 'ERR_HANDLER_RUNNING', message });
        kept.push(config);
        continue;
      }
      // Its mounts, if any, lived in the handler's own mount namespace, gone with it.
      await ctx.store.deleteContainer(config);
      report.removedHandlers.push(config.id);
      continue;
    }
    const where = await whereMounted(ctx, config);
    if (config.mounted && where === 'nowhere') {
      const { mountedInBoot: _, mountedIn: __, ...reset } = { ...config, mounted: false };
      await ctx.store.writeContainer(reset, config);
      (config.mountedInBoot !== undefined && config.mountedInBoot !== boot ? report.rebooted : report.namespaceGone).push(config.id);
      kept.push(reset);
      continue;
    }
    // Mounted in another live namespace: its mounts are there, out of reach, and stay.
    if (typeof where === 'object') elsewhere.add(config.id);
    kept.push(config);
  }
  configs = kept;
  report.removedFiles.push(...(await forgetIdleNamespaces(ctx)));

  const named = new Set(configs.flatMap((c) => c.volumes.map((v) => v.volumeId)));
  for (const { containerId, volumeIds } of corrupt.length > 0 ? [] : await ctx.store.readPending()) {
    for (const volumeId of volumeIds) {
      if (named.has(volumeId) || !(await ctx.store.volumeExists(volumeId))) continue;
      await ctx.store.deleteVolumeDir(volumeId);
      report.removedVolumes.push(volumeId);
    }
    await ctx.store.clearPending(containerId);
  }
  // A configuration moved aside leaves index entries naming it as a user: rebuilt, its
  // volumes become prune candidates.
  if (corrupt.length > 0) await ctx.store.rebuildIndex();
  else await ctx.store.repairIndex(configs);

  await ctx.mounter.recover?.();
  await recoverMounts(ctx, configs, elsewhere, report);
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
      // Another holder's write in progress, if we lost the lock.
      ctx.store.assertLocked();
      rmSync(path.join(root, dir, name), { force: true });
      removed.push(`${dir}/${name}`);
    }
  }
  for (const name of await fs.readdir(path.join(root, 'trash'))) {
    if ((await ctx.mounter.list(path.join(root, 'trash', name))).length > 0) {
      debugRuntime('recover keeps trash/%s: something is mounted inside it', name);
      continue;
    }
    if (await ctx.store.emptyTrash(name)) removed.push(`trash/${name}`);
  }
  try {
    await fs.rm(path.join(root, 'index.new'), { recursive: true });
    removed.push('index.new');
  } catch (error) {
    if (!isErrnoException(error, 'ENOENT')) throw error;
  }
  return removed;
}


import type { Context } from '../context.js';
import { ContainerVolumesError } from '../errors.js';
import { debugRuntime } from '../debug.js';
import type { AttachRequest, Mounter } from '../mounter/mounter.js';
import { currentMountNamespace, mountNamespaceOf, ownNamespaceRefused, processGone, processInNamespace } from '../namespaces/mount-namespace.js';
import { namespaceHolds } from '../namespaces/mounted-elsewhere.js';
import { checkIdmapSupport, planMounts } from '../plan/mount-plan.js';
import { currentBootId } from '../store/boot-id.js';
import type { ContainerConfig } from '../store/container-config.js';
import { forgetNamespace, knownNamespaces, type KnownNamespace, recordNamespace } from '../store/namespace-registry.js';
import { checkVolumesExist } from './containers.js';

/*
 * Attaching: a container that another runtime started (runc applying `ociMounts`) gets
 * the volumes of its configuration that its mount namespace lacks, without a restart.
 * The configuration records, per namespace, that it was attached there (`attachedIn`),
 * and the store's registry of namespaces learns it, before the first mount: from then
 * on no volume it holds is deleted, nor the container removed, while that namespace
 * lives and holds one of its volumes.
 */

export interface Attached {
  config: ContainerConfig;
  attached: string[];
  present: string[];
}

export async function attachContainer(ctx: Context, containerId: string, pid: number): Promise<Attached> {
  const config = await ctx.store.readContainer(containerId);
  const mounter = attachingMounter(ctx, config, 'attach');
  const ns = namespaceOfProcess(pid);
  await checkVolumesExist(ctx, config);
  const plan = planMounts(config, (id) => ctx.store.volumeDir(id));
  checkIdmapSupport(mounter, plan, `container ${config.id}`);
  const requests: AttachRequest[] = plan.map(({ source, path, mode, idmap }) => ({ source, path, mode, ...(idmap ? { idmap } : {}) }));
  if (requests.length === 0) return { config, attached: [], present: [] };
  const boot = currentBootId();
  const entry: KnownNamespace = { ...ns, bootId: boot };
  const wasKnown = knownNamespaces(ctx.store.root).some((k) => k.namespace === ns.namespace);
  const others = (config.attachedIn ?? []).filter((a) => a.namespace !== ns.namespace);
  const recorded: ContainerConfig = { ...config, attachedIn: [...others, entry] };
  // Intent before the first mount, as `mount` records it: a process killed half-way
  // leaves a container that says where its volumes may be, never mounts nobody knows of.
  ctx.store.assertLocked();
  recordNamespace(ctx.store.root, ns, boot);
  await ctx.store.writeContainer(recorded, config);
  let attached: string[];
  try {
    ctx.store.assertLocked();
    attached = await (mounter.attachAll as NonNullable<Mounter['attachAll']>).call(mounter, pid, requests, ns.namespace);
  } catch (error) {
    // The mounter undid what it made: the store goes back to what it was.
    await ctx.store.writeContainer(config, recorded).catch((e: Error) => debugRuntime('restoring %s as it was failed: %s', config.id, e.message));
    if (!wasKnown) forgetNamespace(ctx.store.root, ns.namespace);
    throw error;
  }
  debugRuntime('attached %d volumes of %s in process %d', attached.length, config.id, pid);
  return { config: recorded, attached, present: requests.map((r) => r.path).filter((p) => !attached.includes(p)) };
}

export async function detachContainer(ctx: Context, containerId: string, pid: number, paths: readonly string[] | undefined): Promise<{ config: ContainerConfig; detached: string[] }> {
  const config = await ctx.store.readContainer(containerId);
  const mounter = attachingMounter(ctx, config, 'detach');
  const unknown = paths?.find((p) => !config.volumes.some((v) => v.path === p));
  if (unknown !== undefined) throw new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `container ${config.id} has no volume at ${unknown}`);
  const ns = namespaceOfProcess(pid);
  const all = planMounts(config, (id) => ctx.store.volumeDir(id));
  const targets = all.filter((r) => paths === undefined || paths.includes(r.path)).reverse().map(({ source, path }) => ({ source, path }));
  ctx.store.assertLocked();
  const detached = targets.length > 0 ? await (mounter.detachAll as NonNullable<Mounter['detachAll']>).call(mounter, pid, targets, ns.namespace) : [];
  const attachment = config.attachedIn?.find((a) => a.namespace === ns.namespace);
  if (targets.length !== all.length || attachment === undefined) return { config, detached };
  // A volume still mounted there — under something mounted over it, or moved out of its
  // path's reach by the container renaming its mount point or a parent — is still in
  // use: the attachment is forgotten only once the namespace holds none of the volumes.
  if (await namespaceHolds(ctx, attachment, attachment.bootId, config.volumes.map((v) => v.volumeId))) return { config, detached };
  const rest = (config.attachedIn ?? []).filter((a) => a.namespace !== ns.namespace);
  const { attachedIn: _, ...without } = config;
  const changed: ContainerConfig = rest.length > 0 ? { ...without, attachedIn: rest } : without;
  await ctx.store.writeContainer(changed, config);
  return { config: changed, detached };
}

/**
 * The attachments of the container that keep it in use: the process given to `attach`
 * still runs in that namespace (the container runs), or another process of a namespace
 * with that id has one of its volumes mounted (a namespace whose id was handed to a new
 * one after it died has none).
 */
export async function liveAttachments(ctx: Context, config: ContainerConfig): Promise<KnownNamespace[]> {
  const live: KnownNamespace[] = [];
  const volumeIds = config.volumes.map((v) => v.volumeId);
  for (const a of config.attachedIn ?? []) {
    if (processInNamespace(a, a.bootId) === a.pid || (await namespaceHolds(ctx, a, a.bootId, volumeIds))) live.push(a);
  }
  return live;
}

/** Refuses (ERR_CONTAINER_ATTACHED) to remove a container while a process it was attached to may still use its volumes. */
export async function checkNotAttached(ctx: Context, config: ContainerConfig): Promise<void> {
  const [live] = await liveAttachments(ctx, config);
  if (live === undefined) return;
  throw new ContainerVolumesError(
    'ERR_CONTAINER_ATTACHED',
    `container ${config.id} is attached to process ${live.pid} (mount namespace ${live.namespace}), which still has its volumes mounted: detach it first, or stop that process`,
  );
}

/**
 * The configuration without its attachments whose namespace is gone (or holds none of
 * its volumes any more): recover()'s part. Undefined when there is nothing to forget.
 */
export async function withoutGoneAttachments(ctx: Context, config: ContainerConfig): Promise<ContainerConfig | undefined> {
  if (config.attachedIn === undefined) return undefined;
  const live = await liveAttachments(ctx, config);
  if (live.length === config.attachedIn.length) return undefined;
  const { attachedIn: _, ...without } = config;
  return live.length > 0 ? { ...without, attachedIn: live } : without;
}

function attachingMounter(ctx: Context, config: ContainerConfig, doing: 'attach' | 'detach'): Mounter {
  if (config.handler) {
    throw new ContainerVolumesError(
      'ERR_HANDLER_RUNNING',
      `cannot ${doing} container ${config.id}: it is the transient container of a handler (process ${config.handler.pid}), whose volumes live only in the handler's own namespace`,
    );
  }
  if (config.mounted) {
    throw new ContainerVolumesError(
      'ERR_CONTAINER_MOUNTED',
      `cannot ${doing} container ${config.id}: it is mounted into its rootfs by mount(); attaching is for a container that a runtime started from ociMounts`,
    );
  }
  const { mounter } = ctx;
  if (typeof mounter.attachAll !== 'function' || typeof mounter.detachAll !== 'function') {
    throw new ContainerVolumesError(
      'ERR_ATTACH_UNSUPPORTED',
      `cannot ${doing} container ${config.id}: the mounter has no attachAll/detachAll; use a BindMounter with the kernel engine`,
    );
  }
  return mounter;
}

function namespaceOfProcess(pid: number) {
  const ns = mountNamespaceOf(pid);
  if (ns === undefined) throw processGone(pid);
  if (ns.namespace === currentMountNamespace().namespace) throw ownNamespaceRefused(pid);
  return ns;
}

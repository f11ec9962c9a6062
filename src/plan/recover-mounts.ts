import { statSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { ContainerVolumesError } from '../errors.js';
import { applyPlan, isAsAsked, mountedOf, mountedThere, placeMounts } from './mount-plan.js';
import type { MountedVolume, MountRequest } from '../mounter/mounter.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { RecoveryReport } from '../operations/recover.js';

/** How many mounts stacked on one path recover() peels before it gives up on that path. */
const MAX_STACKED = 16;

/** A container meant to be mounted, with its plan. */
interface Wanted {
  config: ContainerConfig;
  plan: MountRequest[];
}

/**
 * Brings the host's mounts in line with the configurations: under each rootfs, the
 * store's volumes must be mounted exactly as the containers meant to be mounted say,
 * once each. Mounts are judged by host path, so that two containers on one rootfs, or a
 * rootfs inside another container's rootfs, keep their mounts apart: each mount is
 * judged once, in the region of the innermost rootfs that holds it. Outer rootfs go
 * first, since detaching a mount there detaches what is below it too.
 *
 * Containers in `elsewhere` are mounted in another live mount namespace: their mounts
 * are never made here, and where a shared mount propagates them here they are wanted as
 * they are.
 */
export async function recoverMounts(
  ctx: Context,
  configs: readonly ContainerConfig[],
  elsewhere: ReadonlySet<string>,
  report: RecoveryReport,
): Promise<void> {
  // Containers mounted elsewhere cannot meet this namespace's mounts: they are no party to
  // its conflicts, only wanted as they are.
  const wanted = [
    ...(await withoutConflicts(ctx, configs.filter((c) => !elsewhere.has(c.id)), report)),
    ...configs.filter((c) => elsewhere.has(c.id)).map((config) => ({ config, plan: placeMounts(config, (id) => ctx.store.volumeDir(id)) })),
  ];
  const groups = byRootfs(configs);
  const rootfsSet = new Set(configs.map((c) => c.rootfs));
  // The innermost rootfs strictly above a host path: the region that path belongs to.
  const regionOf = (host: string): string | undefined => {
    for (let at = path.dirname(host); ; at = path.dirname(at)) {
      if (rootfsSet.has(at)) return at;
      if (at === '/') return undefined;
    }
  };
  // Who wants a mount in each region: the containers of that rootfs, and any whose mount lands there.
  const wantedIn = new Map<string, Set<Wanted>>();
  for (const w of wanted) {
    for (const region of [w.config.rootfs, ...w.plan.map((r) => regionOf(hostPathOf(r)))]) {
      if (region !== undefined) wantedIn.set(region, (wantedIn.get(region) ?? new Set()).add(w));
    }
  }
  // One listing of the whole namespace tells which rootfs hold any of the store's
  // volumes: a region nobody wants a mount in and with none of them has nothing to do,
  // and is not listed again (a listing reads all of mountinfo: once per rootfs, it made
  // recover() quadratic in practice).
  const holding = new Set<string>();
  for (const m of await ctx.mounter.list('/')) {
    if (!isStoreVolume(m, ctx.store.root)) continue;
    for (let at = path.dirname(m.path); !holding.has(at); at = path.dirname(at)) {
      holding.add(at);
      if (at === '/') break;
    }
  }
  for (const group of groups) {
    const rootfs = (group[0] as ContainerConfig).rootfs;
    if (!wantedIn.has(rootfs) && !holding.has(rootfs) && reachable(rootfs)) continue;
    try {
      await recoverRegion(ctx, rootfs, [...(wantedIn.get(rootfs) ?? [])], (host) => regionOf(host) === rootfs, configs, elsewhere, report);
    } catch (error) {
      // A lost lock, or an error without a code, stops it. A refusal concerns this rootfs
      // alone (a rootfs turned into a symlink, a mount the kernel refuses): say so, go on.
      if (!(error instanceof ContainerVolumesError) || error.code === 'ERR_LOCK_FAILED') throw error;
      for (const config of group) {
        if (report.failed.some((f) => f.containerId === config.id)) continue;
        report.failed.push({ containerId: config.id, code: error.code, message: error.message });
      }
    }
  }
}

/** Whether a rootfs can be walked to (or is simply gone): one that cannot is reported, even when nothing is to be done there. */
function reachable(rootfs: string): boolean {
  try {
    statSync(rootfs, { throwIfNoEntry: false });
    return true;
  } catch {
    return false;
  }
}

/** Containers grouped by rootfs, outer rootfs first: mounts under one rootfs are judged against every container at once. */
function byRootfs(configs: readonly ContainerConfig[]): ContainerConfig[][] {
  const groups = new Map<string, ContainerConfig[]>();
  for (const config of configs) groups.set(config.rootfs, [...(groups.get(config.rootfs) ?? []), config]);
  return [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, group]) => group);
}

const hostPathOf = (request: MountRequest) => path.join(request.rootfs, request.path);

/**
 * The containers meant to be mounted whose mounts can all be in place at once. Two
 * whose mounts meet (one host path, or one inside the other) cannot: `mount` refuses
 * the second, but a state left by an older version, or mounts detached behind the
 * library's back, can still hold both. Then the one whose mounts are in place wins
 * (it may be running), else the older; the other is reported in `failed` and stays
 * marked mounted, for its owner to unmount.
 */
async function withoutConflicts(ctx: Context, configs: readonly ContainerConfig[], report: RecoveryReport): Promise<Wanted[]> {
  const all = configs.filter((c) => c.mounted).map((config) => ({ config, plan: placeMounts(config, (id) => ctx.store.volumeDir(id)) }));
  const byHost = new Map<string, Wanted[]>();
  for (const w of all) for (const r of w.plan) byHost.set(hostPathOf(r), [...(byHost.get(hostPathOf(r)) ?? []), w]);
  // Two mounts meet at one host path or when one is above the other: looking up each
  // mount's own path and its ancestors finds every pair, from the lower one.
  const met = new Map<Wanted, Set<Wanted>>();
  for (const w of all) {
    for (const r of w.plan) {
      for (let at = hostPathOf(r); at !== '/'; at = path.dirname(at)) {
        for (const other of byHost.get(at) ?? []) {
          if (other === w) continue;
          met.set(w, (met.get(w) ?? new Set()).add(other));
          met.set(other, (met.get(other) ?? new Set()).add(w));
        }
      }
    }
  }
  if (met.size === 0) return all;
  const contested = [...met.keys()];
  const inPlace = new Map<Wanted, boolean>();
  for (const w of contested) inPlace.set(w, (await mountedOf(ctx.mounter, w.plan).catch(() => [])).length === w.plan.length);
  // Oldest first among equals: `configs` are oldest first, and the sort is stable.
  const order = contested.sort((a, b) => Number(inPlace.get(b)) - Number(inPlace.get(a)) || all.indexOf(a) - all.indexOf(b));
  const accepted = all.filter((w) => !met.has(w));
  for (const w of order) {
    const winner = [...(met.get(w) as Set<Wanted>)].find((other) => accepted.includes(other));
    if (!winner) {
      accepted.push(w);
      continue;
    }
    report.failed.push({
      containerId: w.config.id,
      code: 'ERR_MOUNT_POINT_IN_USE',
      message: `container ${w.config.id} is meant to be mounted where container ${winner.config.id} is (rootfs ${w.config.rootfs}): unmount one of them`,
    });
  }
  return accepted;
}

/**
 * The region of a rootfs: what is below it and not below another container's rootfs
 * inside it. The store's volumes mounted there must be exactly the wanted mounts whose
 * host path is in the region; anything else (a stray, a stack, a wrong mode, a
 * half-made mount, a volume deleted under its mount) and everything of ours there is
 * detached. Then the plans of the containers with a mount there are applied, making
 * what is missing.
 */
async function recoverRegion(
  ctx: Context,
  rootfs: string,
  here: readonly Wanted[],
  inRegion: (host: string) => boolean,
  configs: readonly ContainerConfig[],
  elsewhere: ReadonlySet<string>,
  report: RecoveryReport,
): Promise<void> {
  const ours = async () =>
    (await ctx.mounter.list(rootfs)).filter((m) => isStoreVolume(m, ctx.store.root) && inRegion(path.join(rootfs, m.path)));
  const expected = here.flatMap((w) => w.plan.filter((r) => inRegion(hostPathOf(r))).map((r) => ({ ...r, rootfs, path: hostPathOf(r).slice(rootfs.length) })));
  if (!(await allWanted(await ours(), expected))) await detachAll(ctx, rootfs, ours, configs, report);
  for (const { config, plan } of here.filter((w) => !elsewhere.has(w.config.id))) {
    for (const { path: p } of await applyPlan(ctx.mounter, plan, () => ctx.store.assertLocked())) {
      report.remounted.push({ containerId: config.id, path: p });
    }
  }
}

/** Whether every mount in `ours` is a complete mount of a distinct planned mount: the right volume, path and mode, idmapped if asked. */
async function allWanted(ours: readonly MountedVolume[], wanted: readonly MountRequest[]): Promise<boolean> {
  const left = [...wanted];
  for (const m of ours) {
    let match = -1;
    for (const [i, request] of left.entries()) {
      if (request.path === m.path && isAsAsked(m, request) && (await mountedThere([m], request))) {
        match = i;
        break;
      }
    }
    if (match === -1) return false;
    left.splice(match, 1);
  }
  return true;
}

/** Detaches every mount of the store's volumes in the region, deepest and topmost first, peeling stacks. */
async function detachAll(
  ctx: Context,
  rootfs: string,
  ours: () => Promise<MountedVolume[]>,
  configs: readonly ContainerConfig[],
  report: RecoveryReport,
): Promise<void> {
  // Reported against the container with a volume at that host path, preferably one meant to be mounted.
  const users = (p: string) => configs.filter((c) => c.volumes.some((v) => path.join(c.rootfs, v.path) === path.join(rootfs, p)));
  const ownerOf = (p: string) => (users(p).find((c) => c.mounted) ?? users(p)[0] ?? configs.find((c) => c.rootfs === rootfs))!.id;
  for (let round = 0; round < MAX_STACKED; round++) {
    const found = await ours();
    if (found.length === 0) return;
    ctx.store.assertLocked();
    // One per path per round: unmounting a path detaches only its topmost mount.
    const targets = [...new Map(found.map((m) => [m.path, { rootfs, path: m.path }])).values()].reverse();
    if (ctx.mounter.unmountAll) await ctx.mounter.unmountAll(targets);
    else for (const target of targets) await ctx.mounter.unmount(target);
    for (const { path: p } of targets) report.unmounted.push({ containerId: ownerOf(p), path: p });
  }
  throw new ContainerVolumesError('ERR_UNMOUNT_FAILED', `mounts under rootfs ${rootfs} are still there after ${MAX_STACKED} rounds of unmounting`);
}

/**
 * A mount of one of the store's volumes: a volume directory, or one deleted under its
 * mount (moved into the trash, or gone: the kernel then shows `//deleted` after it).
 */
function isStoreVolume(mount: MountedVolume, root: string): boolean {
  if (mount.source === undefined) return false;
  const source = mount.source.endsWith('//deleted') ? mount.source.slice(0, -'//deleted'.length) : mount.source;
  const dir = path.dirname(source);
  return dir === path.join(root, 'volumes') || dir === path.join(root, 'trash');
}

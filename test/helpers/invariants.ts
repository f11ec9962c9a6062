import fs from 'node:fs';
import path from 'node:path';
import type { ContainerInfo, ContainerRuntime } from '../../src/index.js';
import { type MountLine, mountTable } from './mounts.js';

/*
 * What must hold of a store and of the host's mounts once recover() has run after a
 * crash (issue 4, item 2). Each check returns the violations it found, as sentences that
 * name the container, volume or path, rather than throwing: the harness prints them all
 * with the state that produced them.
 */

export interface Checked {
  violations: string[];
  /** How many individual facts were checked. */
  checks: number;
}

export interface StoreState extends Checked {
  containers: ContainerInfo[];
  /** Volume directories present. */
  volumes: Set<string>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Where the rootfs directories are, and the other views of them that the kernel keeps in step. */
export interface Layout {
  /** Directories whose subdirectories are rootfs directories. */
  rootfsParents: string[];
  /** A peer of a shared rootfs parent (as another mount namespace would have): what is mounted under `of` appears under `peer` too. */
  peers: { peer: string; of: string }[];
}

/**
 * The store on disk and the host's mounts: every configuration parses, names only
 * existing volumes, nothing half-done is left, and exactly the volumes of the
 * containers meant to be mounted are mounted, once each, from the right directory, with
 * the right options, visible at their path, and in every peer view; no volume is
 * mounted anywhere else (a staging directory, say).
 */
export async function checkStore(runtime: ContainerRuntime, root: string, layout: Layout): Promise<StoreState> {
  const out: StoreState = { violations: [], checks: 0, containers: [], volumes: new Set() };
  const check = (ok: boolean, message: () => string) => {
    out.checks++;
    if (!ok) out.violations.push(message());
  };

  const files = fs.readdirSync(path.join(root, 'containers'));
  const ids = files.filter((n) => n.endsWith('.json') && UUID.test(n.slice(0, -5))).map((n) => n.slice(0, -5));
  for (const id of ids) {
    let parsed = false;
    try {
      JSON.parse(fs.readFileSync(path.join(root, 'containers', `${id}.json`), 'utf8'));
      parsed = true;
    } catch {
      // reported below
    }
    check(parsed, () => `configuration ${id}.json is not JSON`);
  }
  try {
    out.containers = await runtime.list();
  } catch (error) {
    check(false, () => `runtime.list() failed: ${(error as Error).message}`);
    return out;
  }
  check(
    same(out.containers.map((c) => c.id), ids),
    () => `runtime.list() gives ${out.containers.length} containers, containers/ holds ${ids.length} configurations`,
  );

  out.volumes = new Set(fs.readdirSync(path.join(root, 'volumes')));
  for (const c of out.containers) {
    for (const v of c.volumes) {
      check(isDirectory(path.join(root, 'volumes', v.volumeId)), () => `container ${c.id} names volume ${v.volumeId} at ${v.path}, whose directory is missing`);
    }
  }

  const leftovers = [
    ...fs.readdirSync(path.join(root, 'pending')).map((n) => `pending/${n}`),
    ...files.filter((n) => n.endsWith('.tmp')).map((n) => `containers/${n}`),
    ...fs.readdirSync(path.join(root, 'trash')).map((n) => `trash/${n}`),
    ...(fs.existsSync(path.join(root, 'index.new')) ? ['index.new'] : []),
  ];
  check(leftovers.length === 0, () => `left behind: ${leftovers.join(', ')}`);

  const mounts = checkMounts(out.containers, root, layout);
  out.violations.push(...mounts.violations);
  out.checks += mounts.checks;
  return out;
}

const under = (p: string, dir: string) => dir === '/' || p === dir || p.startsWith(`${dir}/`);

/**
 * How mountinfo shows a bind mount of `dir`: its device, and its path inside that file
 * system, found through the topmost mount containing it outside the `excluded` trees.
 */
function mountinfoSourceOf(dir: string, all: readonly MountLine[], excluded: readonly string[]): { device: string; root: string } | undefined {
  let best: MountLine | undefined;
  for (const m of all) {
    if (excluded.some((x) => under(m.mountPoint, x)) || !under(dir, m.mountPoint)) continue;
    if (!best || m.mountPoint.length >= best.mountPoint.length) best = m;
  }
  return best && { device: best.device, root: path.posix.join(best.root, path.posix.relative(best.mountPoint, dir)) };
}

function checkMounts(containers: readonly ContainerInfo[], root: string, layout: Layout): Checked {
  const out: Checked = { violations: [], checks: 0 };
  const check = (ok: boolean, message: () => string) => {
    out.checks++;
    if (!ok) out.violations.push(message());
  };
  const all = mountTable();
  const zones = [...layout.rootfsParents, ...layout.peers.map((p) => p.peer)];
  const wanted = new Map<string, { containerId: string; volumeId: string; mode: string }>();
  for (const c of containers) {
    if (!c.mounted) continue;
    const views = [c.rootfs, ...layout.peers.filter((p) => under(c.rootfs, p.of)).map((p) => path.join(p.peer, path.relative(p.of, c.rootfs)))];
    for (const view of views) {
      for (const v of c.volumes) wanted.set(path.join(view, v.path), { containerId: c.id, volumeId: v.volumeId, mode: v.mode });
    }
  }
  const found = new Map<string, MountLine[]>();
  for (const m of all) {
    if (zones.some((z) => m.mountPoint.startsWith(`${z}/`))) found.set(m.mountPoint, [...(found.get(m.mountPoint) ?? []), m]);
  }

  for (const [mountPoint, lines] of found) {
    const want = wanted.get(mountPoint);
    check(want !== undefined, () => `${mountPoint} is mounted (${lines.map((l) => l.root).join(', ')}) but no container meant to be mounted has a volume there`);
    check(lines.length <= 1, () => `${mountPoint} has ${lines.length} mounts stacked: ${lines.map((l) => `${l.root} ${l.options.join(',')}`).join(' | ')}`);
  }
  for (const [mountPoint, want] of wanted) {
    const lines = found.get(mountPoint) ?? [];
    const where = `volume ${want.volumeId} of container ${want.containerId} at ${mountPoint}`;
    check(lines.length > 0, () => `${where} is not mounted, though the container is meant to be mounted`);
    const top = lines.at(-1);
    if (!top) continue;
    const volumeDir = path.join(root, 'volumes', want.volumeId);
    const source = mountinfoSourceOf(volumeDir, all, zones);
    check(top.root === source?.root, () => `${where} shows ${top.root}, not the volume's directory ${source?.root}`);
    check(top.options.includes(want.mode), () => `${where} is mounted ${top.options.join(',')}, the configuration says ${want.mode}`);
    check(top.options.includes('nosuid') && top.options.includes('nodev'), () => `${where} is mounted ${top.options.join(',')}, without nosuid,nodev`);
    check(sameDirectory(mountPoint, volumeDir), () => `${where}: what is visible there is not the volume's directory (a mount covers it, or it is under another)`);
  }

  const volumes = mountinfoSourceOf(path.join(root, 'volumes'), all, zones);
  for (const m of all) {
    if (!volumes || m.device !== volumes.device || !m.root.startsWith(`${volumes.root}/`)) continue;
    check(wanted.has(m.mountPoint), () => `${m.mountPoint} is a mount of ${m.root} (a volume, or inside one) that no configuration wants there`);
  }
  return out;
}

export interface JournalLine {
  op: 'ready' | 'started' | 'begin' | 'ack' | 'refused' | 'error';
  seq?: number;
  kind?: string;
  id?: string;
  volumeId?: string;
  withVolumes?: boolean;
  /** The volumes of the container a `remove` began on, as the worker knew them. */
  named?: string[];
  volumes?: { path: string; volumeId: string; mode: string }[];
  removed?: string[];
  code?: string;
  message?: string;
}

/**
 * Against what one worker began and acknowledged before it was killed: no volume
 * present at the start vanished unless an operation that may delete it was begun
 * (`remove` with `volumes` of a container naming it, `volumes.remove` of it, `prune`),
 * and every acknowledged change is still there unless a later operation began on it.
 */
/**
 * `namespaceGone`: the worker ran in a mount namespace of its own, which died with it:
 * what it mounted is unmounted after recover(), as after a reboot.
 */
export function checkJournal(journal: readonly JournalLine[], before: ReadonlySet<string>, after: StoreState, namespaceGone = false): Checked {
  const out: Checked = { violations: [], checks: 0 };
  const check = (ok: boolean, message: () => string) => {
    out.checks++;
    if (!ok) out.violations.push(message());
  };
  const begun = journal.filter((l) => l.op === 'begin');
  const pruned = begun.some((l) => l.kind === 'prune');
  const mayDelete = new Set<string>();
  for (const l of begun) {
    if (l.kind === 'remove' && l.withVolumes) for (const id of l.named ?? []) mayDelete.add(id);
    if (l.kind === 'removeVolume' && l.volumeId) mayDelete.add(l.volumeId);
  }
  for (const volumeId of before) {
    if (after.volumes.has(volumeId)) continue;
    check(pruned || mayDelete.has(volumeId), () => `volume ${volumeId} was deleted, though no operation begun could delete it`);
  }

  const byId = new Map(after.containers.map((c) => [c.id, c]));
  const laterBegun = (seq: number, id: string, kinds: string[]) => begun.some((l) => (l.seq ?? 0) > seq && l.id === id && kinds.includes(l.kind ?? ''));
  for (const ack of journal.filter((l) => l.op === 'ack')) {
    const seq = ack.seq ?? 0;
    const id = ack.id ?? '';
    const what = `acknowledged ${ack.kind} #${seq}${ack.id ? ` of ${ack.id}` : ''}`;
    switch (ack.kind) {
      case 'create':
      case 'createVolumes':
      case 'share': {
        if (laterBegun(seq, id, ['remove'])) break;
        const config = byId.get(id);
        check(config !== undefined, () => `${what}: the container is gone`);
        for (const v of ack.volumes ?? []) {
          check(config?.volumes.some((c) => c.path === v.path && c.volumeId === v.volumeId && c.mode === v.mode) ?? false, () => `${what}: ${v.path} → ${v.volumeId} (${v.mode}) was lost`);
        }
        break;
      }
      case 'mount':
        if (laterBegun(seq, id, ['unmount', 'remove'])) break;
        if (namespaceGone) check(byId.get(id)?.mounted === false, () => `${what}: the container is still mounted, though its namespace is gone`);
        else check(byId.get(id)?.mounted === true, () => `${what}: the container is not mounted`);
        break;
      case 'unmount':
        if (!laterBegun(seq, id, ['mount', 'remove'])) check(byId.get(id)?.mounted === false, () => `${what}: the container is mounted`);
        break;
      case 'remove':
        check(!byId.has(id), () => `${what}: the container is back`);
        break;
      case 'removeVolume':
        check(!after.volumes.has(ack.volumeId ?? ''), () => `${what}: volume ${ack.volumeId} is back`);
        break;
      case 'prune':
        for (const v of ack.removed ?? []) check(!after.volumes.has(v), () => `${what}: pruned volume ${v} is back`);
        break;
    }
  }
  return out;
}

function same(a: readonly string[], b: readonly string[]): boolean {
  const sorted = [...b].sort();
  return a.length === b.length && [...a].sort().every((x, i) => x === sorted[i]);
}

function isDirectory(p: string): boolean {
  try {
    return fs.lstatSync(p).isDirectory();
  } catch {
    return false;
  }
}

function sameDirectory(a: string, b: string): boolean {
  try {
    const [x, y] = [fs.statSync(a), fs.statSync(b)];
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

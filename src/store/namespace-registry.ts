import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { isNamespaceId, type MountNamespace } from '../namespaces/mount-namespace.js';
import { isPid, isStartTime } from '../namespaces/process-alive.js';
import { isBootId } from './boot-id.js';
import { writeFileAtomicUndurable } from './atomic-file.js';

/**
 * `namespaces/<inode>.json`: every mount namespace in which a container of the store
 * was mounted, so that a volume is never deleted while one of them still has it
 * mounted, even once no configuration says so. Written without fsync: only a power
 * loss can lose an entry, and it ends every namespace of that boot too.
 */
export interface KnownNamespace extends MountNamespace {
  bootId: string;
}

/**
 * Records the namespace before a mount is made in it. Checked at every mount, not
 * once per process: recover() forgets an entry whose namespace holds no volume.
 */
export function recordNamespace(root: string, ns: MountNamespace, bootId: string): void {
  const file = entryFile(root, ns.namespace);
  const entry = `${JSON.stringify({ ...ns, bootId })}\n`;
  try {
    if (readFileSync(file, 'utf8') === entry) return;
  } catch {
    // not recorded yet
  }
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileAtomicUndurable(file, entry);
}

/** The namespaces recorded; an entry that does not parse is skipped (it can name nothing of use). */
export function knownNamespaces(root: string): KnownNamespace[] {
  let names: string[];
  try {
    names = readdirSync(path.join(root, 'namespaces'));
  } catch {
    return [];
  }
  const known: KnownNamespace[] = [];
  for (const name of names) {
    if (!/^[1-9][0-9]*\.json$/.test(name)) continue;
    try {
      const entry = JSON.parse(readFileSync(path.join(root, 'namespaces', name), 'utf8')) as Record<string, unknown>;
      const { namespace, pid, startTime, bootId } = entry;
      if (!isNamespaceId(namespace) || entryName(namespace) !== name || !isBootId(bootId)) continue;
      if (!isPid(pid) || !isStartTime(startTime)) continue;
      known.push({ namespace, pid, startTime, bootId });
    } catch {
      // Being replaced, or damaged: nothing to learn from it.
    }
  }
  return known;
}

export function forgetNamespace(root: string, namespace: string): void {
  rmSync(entryFile(root, namespace), { force: true });
}

function entryFile(root: string, namespace: string): string {
  return path.join(root, 'namespaces', entryName(namespace));
}

/** `mnt:[4026531832]` → `4026531832.json`. */
function entryName(namespace: string): string {
  return `${namespace.slice(5, -1)}.json`;
}

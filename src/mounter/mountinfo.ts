import fs from 'node:fs/promises';

/** One line of /proc/self/mountinfo. */
export interface MountinfoEntry {
  /** The mount's id, as `/proc/<pid>/fdinfo/<fd>` gives it for a descriptor inside the mount. */
  id: number;
  device: string;
  /** The directory of the source file system that is mounted (a bind mount's source, relative to its file system). */
  root: string;
  mountPoint: string;
  /** Per-mount options (`ro`, `nosuid`, …); the superblock may say otherwise. */
  options: string[];
  /** Propagation tags (`shared:N`, `master:N`); none for a private mount. */
  propagation: string[];
}

/** mountinfo escapes space, tab, newline and backslash as three octal digits. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function parseMountinfo(text: string): MountinfoEntry[] {
  const entries: MountinfoEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const dash = fields.indexOf('-', 6);
    if (dash === -1) continue;
    entries.push({
      id: Number(fields[0]),
      device: fields[2] as string,
      root: unescape(fields[3] as string),
      mountPoint: unescape(fields[4] as string),
      options: (fields[5] as string).split(','),
      propagation: fields.slice(6, dash),
    });
  }
  return entries;
}

/** The mounts of this process's mount namespace, or of the one `file` (`/proc/<pid>/mountinfo`) describes. */
export async function readMountinfo(file = '/proc/self/mountinfo'): Promise<MountinfoEntry[]> {
  return parseMountinfo(await fs.readFile(file, 'utf8'));
}

/**
 * The host path a bind mount shows, found through a mount of an *ancestor* directory
 * of the same file system (for a volume: the mount that holds the store), the nearest
 * one winning. Another bind mount of the very same directory (the volume mounted in
 * another container) is never the witness: it would name a second path for it. Mounts
 * inside `exclude` (the rootfs being listed) are never witnesses either.
 */
export function bindSource(entry: MountinfoEntry, all: readonly MountinfoEntry[], exclude: string): string | undefined {
  let best: MountinfoEntry | undefined;
  for (const other of all) {
    if (other.device !== entry.device || other.root === entry.root) continue;
    if (other.mountPoint === exclude || other.mountPoint.startsWith(`${exclude}/`)) continue;
    if (other.root !== '/' && !entry.root.startsWith(`${other.root}/`)) continue;
    if (!best || other.root.length > best.root.length) best = other;
  }
  if (!best) return undefined;
  const rest = best.root === '/' ? entry.root : entry.root.slice(best.root.length);
  return best.mountPoint === '/' ? rest : `${best.mountPoint}${rest}`;
}

import fs from 'node:fs/promises';

/** One line of /proc/self/mountinfo. */
export interface MountinfoEntry {
  id: number;
  parentId: number;
  device: string;
  /** The directory of the source file system that is mounted (a bind mount's source, relative to its file system). */
  root: string;
  mountPoint: string;
  /** Per-mount options (`ro`, `nosuid`, …); the superblock may say otherwise. */
  options: string[];
  fsType: string;
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
      parentId: Number(fields[1]),
      device: fields[2] as string,
      root: unescape(fields[3] as string),
      mountPoint: unescape(fields[4] as string),
      options: (fields[5] as string).split(','),
      fsType: fields[dash + 1] as string,
    });
  }
  return entries;
}

export async function readMountinfo(): Promise<MountinfoEntry[]> {
  return parseMountinfo(await fs.readFile('/proc/self/mountinfo', 'utf8'));
}

/**
 * The host path a bind mount shows, found through another mount of the same file
 * system whose root contains it. The witness closest to the file system's own root
 * wins (for a volume: the mount holding the store), never another bind mount of the
 * same directory, which would name a second path for it; mounts inside `exclude`
 * (the rootfs being listed) are never witnesses.
 */
export function bindSource(entry: MountinfoEntry, all: readonly MountinfoEntry[], exclude: string): string | undefined {
  let best: MountinfoEntry | undefined;
  for (const other of all) {
    if (other.device !== entry.device || other === entry) continue;
    if (other.mountPoint === exclude || other.mountPoint.startsWith(`${exclude}/`)) continue;
    const prefix = other.root === '/' ? '' : other.root;
    if (entry.root !== other.root && !entry.root.startsWith(`${prefix}/`)) continue;
    if (!best || other.root.length < best.root.length) best = other;
  }
  if (!best) return undefined;
  const rest = entry.root.slice(best.root === '/' ? 0 : best.root.length);
  return best.mountPoint === '/' ? rest || '/' : `${best.mountPoint}${rest === '/' ? '' : rest}`;
}

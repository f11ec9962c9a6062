import { readFileSync } from 'node:fs';

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
  /** The file system type (`ext4`, `tmpfs`). */
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
      device: fields[2] as string,
      root: unescape(fields[3] as string),
      mountPoint: unescape(fields[4] as string),
      options: (fields[5] as string).split(','),
      propagation: fields.slice(6, dash),
      fsType: unescape(fields[dash + 1] ?? ''),
    });
  }
  return entries;
}

/**
 * The mounts of this process's mount namespace, or of the one `file` (`/proc/<pid>/mountinfo`)
 * describes. Read synchronously: the kernel generates the text in memory, in microseconds,
 * while an asynchronous read takes four trips through libuv's thread pool (open, stat,
 * read, close), which cost a millisecond per listing on a busy machine.
 */
export async function readMountinfo(file = '/proc/self/mountinfo'): Promise<MountinfoEntry[]> {
  return parseMountinfo(readFileSync(file, 'utf8'));
}

/**
 * The host path a bind mount shows, found through a mount of an *ancestor* directory
 * of the same file system (for a volume: the mount that holds the store), the nearest
 * one winning. Another bind mount of the very same directory (the volume mounted in
 * another container) is never the witness: it would name a second path for it. Mounts
 * inside `exclude` (the rootfs being listed) are never witnesses either.
 */
export function bindSource(entry: MountinfoEntry, all: readonly MountinfoEntry[], exclude: string | undefined): string | undefined {
  return bindSources(all, exclude)(entry);
}

/**
 * `bindSource` for many entries of one table: the witnesses are indexed once by file
 * system and root, and each entry looks up its own ancestors only, so listing every
 * mount of a host costs a pass over the table, not its square. Without `exclude`
 * (listing the whole tree), any mount may be a witness.
 */
export function bindSources(all: readonly MountinfoEntry[], exclude: string | undefined): (entry: MountinfoEntry) => string | undefined {
  const witnesses = new Map<string, MountinfoEntry>();
  for (const other of all) {
    if (exclude !== undefined && (other.mountPoint === exclude || other.mountPoint.startsWith(`${exclude}/`))) continue;
    const key = `${other.device} ${other.root}`;
    if (!witnesses.has(key)) witnesses.set(key, other);
  }
  return (entry) => {
    // Nearest ancestor first: every prefix of the root that ends before a '/', then '/'.
    for (let end = entry.root.lastIndexOf('/', entry.root.length - 1); end >= 0; end = end === 0 ? -1 : entry.root.lastIndexOf('/', end - 1)) {
      const ancestor = end === 0 ? '/' : entry.root.slice(0, end);
      const best = ancestor === entry.root ? undefined : witnesses.get(`${entry.device} ${ancestor}`);
      if (!best) continue;
      const rest = best.root === '/' ? entry.root : entry.root.slice(best.root.length);
      return best.mountPoint === '/' ? rest : `${best.mountPoint}${rest}`;
    }
    return undefined;
  };
}

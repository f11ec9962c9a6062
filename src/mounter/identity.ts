import { fstatSync, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';

/** The id of the mount a descriptor is on, as /proc/self/mountinfo numbers it. */
export function mountIdOf(fd: number): number {
  const match = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!match) throw new Error(`no mnt_id in /proc/self/fdinfo/${fd}`);
  return Number(match[1]);
}

export function sameInode(a: number, b: number): boolean {
  const [x, y] = [fstatSync(a), fstatSync(b)];
  return x.dev === y.dev && x.ino === y.ino;
}

/**
 * What makes a directory the same directory whatever path reaches it (another bind
 * mount of it, a symlink): its device and inode. Undefined when it cannot be read.
 */
export async function directoryIdentity(dir: string): Promise<string | undefined> {
  try {
    const { dev, ino } = await stat(dir);
    return `${dev}:${ino}`;
  } catch {
    return undefined;
  }
}

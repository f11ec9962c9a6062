import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** One line of /proc/self/mountinfo, as the tests read it (independently of src/). */
export interface MountLine {
  id: number;
  device: string;
  mountPoint: string;
  /** The directory of the source file system that is mounted (for a bind mount on the root fs: the host path). */
  root: string;
  options: string[];
  /** Propagation tags (`shared:N`, `master:N`). */
  optional: string[];
}

/**
 * Every mount of this process's namespace, in mountinfo order; or of another process's,
 * given its `/proc/<pid>/mountinfo` (mount points then as seen from that process's root).
 */
export function mountTable(mountinfo = '/proc/self/mountinfo'): MountLine[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs
    .readFileSync(mountinfo, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(' ');
      const dash = f.indexOf('-', 6);
      return {
        id: Number(f[0]),
        device: f[2] as string,
        root: unescape(f[3] as string),
        mountPoint: unescape(f[4] as string),
        options: (f[5] as string).split(','),
        optional: f.slice(6, dash),
      };
    });
}

/** The mounts whose mount point is under `dir` (or is it), in mountinfo order. */
export function mountsUnder(dir: string): MountLine[] {
  return mountTable().filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`));
}

/** Detaches every mount under `dir`, deepest first: cleanup after a test that failed half-way. */
export function unmountAllUnder(dir: string): void {
  for (const { mountPoint } of mountsUnder(dir).reverse()) {
    execFileSync('umount', ['-l', mountPoint]);
  }
}

/**
 * Puts logging wrappers of `tools` (`mount`, `umount`…) first on PATH, each appending its
 * name to `log` before running the real one, so a test can count the processes a mounter
 * spawns. `restore()` puts PATH back.
 */
export function logSpawns(dir: string, tools: readonly string[]): { log: string; restore(): void } {
  const bin = path.join(dir, 'bin');
  const log = path.join(dir, 'spawns.log');
  fs.mkdirSync(bin);
  for (const tool of tools) {
    fs.writeFileSync(path.join(bin, tool), `#!/bin/bash\necho ${tool} >> ${log}\nexec /usr/bin/${tool} "$@"\n`, { mode: 0o755 });
  }
  const savedPath = process.env.PATH;
  process.env.PATH = `${bin}:${savedPath}`;
  return {
    log,
    restore: () => {
      process.env.PATH = savedPath;
    },
  };
}

/** Ten volume directories under `dir`, each holding a marker file, as requests at `/data/<i>` in `rootfs`, rw and ro in turn. */
export function tenVolumeRequests(dir: string, rootfs: string) {
  return Array.from({ length: 10 }, (_, i) => {
    const source = path.join(dir, `volume-${i}`);
    fs.mkdirSync(source);
    fs.writeFileSync(path.join(source, 'marker'), `volume ${i}`);
    return { source, rootfs, path: `/data/${i}`, mode: i % 2 ? ('ro' as const) : ('rw' as const) };
  });
}

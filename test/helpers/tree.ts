import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/*
 * A tree as a copy of it must reproduce, read independently of src/: for the transfer
 * tests (streams, sync, two hosts), which compare a copy with its source file by file.
 */

export interface TreeEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  mtime: string;
  size?: number;
  sha256?: string;
  link?: string;
  /** The first path (in walk order) of the same inode: hard links stay one file. */
  sameFileAs?: string;
  /** A regular file with fewer blocks allocated than its size needs. */
  sparse?: boolean;
  xattrs?: Record<string, string>;
}

const TYPES: Record<number, string> = { 0o100000: 'file', 0o040000: 'dir', 0o120000: 'symlink', 0o010000: 'fifo', 0o020000: 'chardev', 0o060000: 'blockdev', 0o140000: 'socket' };

/**
 * Every entry under `dir` ('.' for itself), keyed by relative path, except `skip`
 * (mount points of nested volumes) and, with `mtimes: false`, without modification
 * times (a volume root's changes when a sync writes beside it).
 */
export function describeTree(dir: string, { skip = [] as readonly string[], mtimes = true } = {}): Record<string, TreeEntry> {
  const out: Record<string, TreeEntry> = {};
  const inodes = new Map<bigint, string>();
  const visit = (full: string, rel: string) => {
    const stat = fs.lstatSync(full, { bigint: true });
    const type = TYPES[Number(stat.mode & 0o170000n)] ?? 'unknown';
    const entry: TreeEntry = { type, mode: (stat.mode & 0o7777n).toString(8).padStart(4, '0'), uid: Number(stat.uid), gid: Number(stat.gid), mtime: mtimes && type !== 'dir' ? stat.mtimeNs.toString() : '' };
    if (type === 'file') {
      entry.size = Number(stat.size);
      entry.sha256 = createHash('sha256').update(fs.readFileSync(full)).digest('hex');
      entry.sparse = stat.blocks * 512n < stat.size;
      const first = inodes.get(stat.ino);
      if (first === undefined) inodes.set(stat.ino, rel);
      else entry.sameFileAs = first;
    }
    if (type === 'symlink') entry.link = fs.readlinkSync(full);
    out[rel] = entry;
    if (type !== 'dir') return;
    for (const name of fs.readdirSync(full).sort()) {
      const childRel = rel === '.' ? name : `${rel}/${name}`;
      if (!skip.includes(childRel)) visit(path.join(full, name), childRel);
    }
  };
  visit(dir, '.');
  // Every extended attribute in every namespace (ACLs are system.posix_acl_*), in hex.
  const dump = spawnSync('getfattr', ['--recursive', '--dump', '--match=-', '--no-dereference', '--encoding=hex', '.'], { cwd: dir, encoding: 'latin1' }).stdout ?? '';
  let current: TreeEntry | undefined;
  for (const line of dump.split('\n')) {
    if (line.startsWith('# file: ')) {
      const raw = line.slice('# file: '.length).replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      current = out[raw === '.' ? '.' : raw.replace(/^\.\//, '')];
      if (current) current.xattrs = {};
    } else if (current && line.includes('=')) {
      const eq = line.indexOf('=');
      current.xattrs![line.slice(0, eq)] = line.slice(eq + 1);
    }
  }
  return out;
}

/**
 * Fills `dir` with what a transfer must keep: a nested directory, a hard link, a
 * relative and a dangling symlink, modes with setuid/setgid/sticky, other owners (also
 * of a symlink), an extended attribute, an ACL, a sparse file, an empty file.
 */
export function populateTree(dir: string): void {
  const at = (p: string) => path.join(dir, p);
  fs.mkdirSync(at('sub/deeper'), { recursive: true });
  fs.writeFileSync(at('sub/deeper/file'), 'deep\n');
  fs.writeFileSync(at('linked'), 'one file, two names\n');
  fs.linkSync(at('linked'), at('sub/linked-too'));
  fs.symlinkSync('sub/deeper/file', at('relative-link'));
  fs.symlinkSync('/nowhere/at/all', at('dangling-link'));
  fs.writeFileSync(at('setuid'), '#!/bin/sh\n');
  fs.chmodSync(at('setuid'), 0o4755);
  fs.mkdirSync(at('setgid-dir'));
  fs.chmodSync(at('setgid-dir'), 0o2775);
  fs.mkdirSync(at('sticky'));
  fs.chmodSync(at('sticky'), 0o1777);
  fs.writeFileSync(at('private'), 'secret\n', { mode: 0o600 });
  fs.chownSync(at('private'), 999, 999);
  fs.writeFileSync(at('big-ids'), 'ids\n');
  fs.chownSync(at('big-ids'), 70_000, 80_000);
  fs.lchownSync(at('relative-link'), 1234, 5678);
  fs.writeFileSync(at('attrs'), 'attributes\n');
  spawnSync('setfattr', ['-n', 'user.note', '-v', 'kept', at('attrs')]);
  spawnSync('setfacl', ['-m', 'u:1234:rx', at('attrs')]);
  fs.writeFileSync(at('empty'), '');
  const sparse = fs.openSync(at('sparse.img'), 'w');
  fs.ftruncateSync(sparse, 16 * 1024 * 1024);
  fs.writeSync(sparse, Buffer.alloc(4096, 7), 0, 4096, 8 * 1024 * 1024);
  fs.closeSync(sparse);
  // Nanosecond times in the past, symlinks' included: a copy made now must carry them over.
  spawnSync('find', [dir, '-mindepth', '1', '-exec', 'touch', '-h', '-d', '@1600000000.123456789', '{}', '+']);
}

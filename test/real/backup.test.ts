import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, type ContainerInfo } from '../../src/index.js';
import { cleanupTemp, expectCode, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * What a backup → restore round trip keeps, and the ways a backup of a real volume
 * used to fail or lose data: a planted `.partial` symlink, members named like the
 * manifest, attributes outside `user.*`, names that are not UTF-8, a volume being
 * written meanwhile, a volume directory gone, a hard link between two volumes, a path
 * deeper than PATH_MAX. Trees are compared by a walker of this file (lstat with byte
 * names, getfattr), not by the code under test.
 */

jest.setTimeout(180_000);

const MANIFEST = 'container-volumes-backup.json';
const MiB = 1024 * 1024;
let base: string;

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('backup-');
});

afterAll(async () => {
  if (base) unmountAllUnder(base);
  // Node's fs.rm cannot remove a tree deeper than PATH_MAX; coreutils rm can.
  if (base) execFileSync('rm', ['-rf', '--', base]);
  await cleanupTemp();
});

async function world(volumes: string[]) {
  const dir = await fsp.mkdtemp(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  const rootfs = async (name: string) => {
    const p = path.join(dir, 'rootfs', name);
    await fsp.mkdir(p, { recursive: true });
    return p;
  };
  const db = await runtime.create({ rootfs: await rootfs('db'), volumes });
  const hostPath = (container: ContainerInfo, containerPath: string): string => {
    const volume = container.volumes.find((v) => v.path === containerPath);
    if (!volume) throw new Error(`${container.id} has no volume at ${containerPath}`);
    return path.join(root, 'volumes', volume.volumeId);
  };
  return { dir, root, runtime, rootfs, db, hostPath, at: (p: string) => hostPath(db, p) };
}
type World = Awaited<ReturnType<typeof world>>;

/** After a call settled: the store has exactly `containerIds`, nothing is mounted, and no temporary archive is left. */
async function expectNothingLeft(w: World, containerIds: readonly string[], archiveDir = w.dir): Promise<void> {
  expect((await w.runtime.list()).map((c) => c.id).sort()).toEqual([...containerIds].sort());
  expect(mountsUnder(w.dir)).toEqual([]);
  expect((await fsp.readdir(archiveDir)).filter((n) => n.endsWith('.partial'))).toEqual([]);
}

async function roundTrip(w: World, name = 'db.tar') {
  const archive = path.join(w.dir, name);
  const result = await w.runtime.backup(w.db.id, archive);
  const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs(`restored-${path.basename(name, '.tar')}`) });
  return { archive, result, restored };
}

// ---------------------------------------------------------------------------------------
// An independent walker.

/** A relative byte name, readable: printable ASCII as is, any other byte as \xNN. */
function show(name: Buffer): string {
  let out = '';
  for (const byte of name) out += byte >= 0x20 && byte < 0x7f && byte !== 0x5c ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`;
  return out;
}

interface Entry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  mtimeNs: string;
  size?: string;
  sha256?: string;
  link?: string;
  rdev?: string;
  sameFileAs?: string;
  xattrs?: Record<string, string>;
}

const TYPES: Record<number, string> = { 0o100000: 'file', 0o040000: 'dir', 0o120000: 'symlink', 0o010000: 'fifo', 0o020000: 'chardev', 0o060000: 'blockdev', 0o140000: 'socket' };

/**
 * Every entry under `dir` ('.' for itself) with what a restore must reproduce, keyed by
 * its readable byte path. `skip` are relative paths left out (mount points of nested
 * volumes: the archive holds the nested volume's root there, not the directory).
 */
function describeTree(dir: string, skip: readonly string[] = []): Record<string, Entry> {
  const out: Record<string, Entry> = {};
  const inodes = new Map<bigint, string>();
  const visit = (full: Buffer, rel: string) => {
    // Node reaches no path as long as PATH_MAX: deeper entries are compared by deepListing.
    if (full.length >= DEEP_PATH) return;
    const stat = fs.lstatSync(full, { bigint: true });
    const type = TYPES[Number(stat.mode & 0o170000n)] ?? 'unknown';
    const entry: Entry = { type, mode: (stat.mode & 0o7777n).toString(8).padStart(4, '0'), uid: Number(stat.uid), gid: Number(stat.gid), mtimeNs: stat.mtimeNs.toString() };
    if (type === 'file') {
      entry.size = stat.size.toString();
      entry.sha256 = createHash('sha256').update(fs.readFileSync(full)).digest('hex');
      const first = inodes.get(stat.ino);
      if (first === undefined) inodes.set(stat.ino, rel);
      else entry.sameFileAs = first;
    }
    if (type === 'symlink') entry.link = show(fs.readlinkSync(full, { encoding: 'buffer' }));
    if (type === 'chardev' || type === 'blockdev') entry.rdev = stat.rdev.toString();
    out[rel] = entry;
    if (type !== 'dir') return;
    const names = fs.readdirSync(full, { encoding: 'buffer' }).sort(Buffer.compare);
    for (const name of names) {
      const childRel = rel === '.' ? show(name) : `${rel}/${show(name)}`;
      if (skip.includes(childRel)) continue;
      visit(Buffer.concat([full, Buffer.from('/'), name]), childRel);
    }
  };
  visit(Buffer.from(dir), '.');
  // Every extended attribute in every namespace (ACLs are system.posix_acl_*), in hex.
  // getfattr fails on paths deeper than PATH_MAX (left out above) after dumping all the others.
  const result = spawnSync('getfattr', ['--recursive', '--dump', '--match=-', '--no-dereference', '--encoding=hex', '.'], { cwd: dir, maxBuffer: 256 * MiB });
  const dump = result.stdout;
  let current: Entry | undefined;
  for (const line of dump.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      const raw = line.slice('# file: '.length).replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      const rel = raw === '.' ? '.' : show(Buffer.from(raw.replace(/^\.\//, ''), 'latin1'));
      current = out[rel];
      if (current) current.xattrs = {};
    } else if (current && line.includes('=')) {
      const eq = line.indexOf('=');
      current.xattrs![line.slice(0, eq)] = line.slice(eq + 1);
    }
  }
  return out;
}

const DEEP_PATH = 4000;

/**
 * What describeTree leaves out: every entry at any depth under `dir`, as find (which
 * walks by descriptors) sees it: type, mode, owner, nanosecond mtime, size, link count.
 */
function deepListing(dir: string): string[] {
  const out = execFileSync('find', ['.', '-printf', '%P\\0%y %m %U %G %T@ %s %n\\0'], { cwd: dir, maxBuffer: 64 * MiB });
  const fields = out.toString('latin1').split('\0');
  const lines: string[] = [];
  for (let i = 0; i + 1 < fields.length; i += 2) lines.push(`${fields[i]} ${fields[i + 1]}`);
  return lines.sort();
}

// ---------------------------------------------------------------------------------------

describe('backup writes its archive safely', () => {
  test('a symlink planted at <destination>.partial is never followed: the file it names is untouched', async () => {
    const w = await world(['/data']);
    await fsp.writeFile(path.join(w.at('/data'), 'a'), 'a\n');
    const backups = path.join(w.dir, 'backups');
    await fsp.mkdir(backups, { mode: 0o1777 });
    const victim = path.join(w.dir, 'victim');
    await fsp.writeFile(victim, 'precious\n');
    const archive = path.join(backups, 'db.tar');
    await fsp.symlink(victim, `${archive}.partial`);
    await w.runtime.backup(w.db.id, archive);
    expect(await fsp.readFile(victim, 'utf8')).toBe('precious\n');
    expect(fs.lstatSync(`${archive}.partial`).isSymbolicLink()).toBe(true);
    expect(execFileSync('tar', ['--list', `--file=${archive}`], { encoding: 'utf8' }).split('\n')[0]).toBe(MANIFEST);
  });

  test('an onProgress that throws changes nothing: backup and restore complete, and the process lives on', async () => {
    const w = await world(['/data']);
    await fsp.writeFile(path.join(w.at('/data'), 'big'), randomBytes(4 * MiB));
    const archive = path.join(w.dir, 'db.tar');
    let calls = 0;
    const onProgress = () => {
      calls++;
      throw new Error('a progress bar that broke');
    };
    await w.runtime.backup(w.db.id, archive, { onProgress });
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored'), onProgress });
    expect(calls).toBeGreaterThan(1);
    expect(fs.readFileSync(path.join(w.hostPath(restored, '/data'), 'big'))).toEqual(fs.readFileSync(path.join(w.at('/data'), 'big')));
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });

  test('two backups to one destination at once both succeed, and the destination is a whole archive', async () => {
    const w = await world(['/data']);
    await fsp.writeFile(path.join(w.at('/data'), 'big'), randomBytes(8 * MiB));
    const archive = path.join(w.dir, 'db.tar');
    const results = await Promise.allSettled([w.runtime.backup(w.db.id, archive), w.runtime.backup(w.db.id, archive)]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    expect(fs.readFileSync(path.join(w.hostPath(restored, '/data'), 'big'))).toEqual(fs.readFileSync(path.join(w.at('/data'), 'big')));
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });
});

describe('restore brings back every file of the volumes', () => {
  test(`files and directories named ${MANIFEST} inside the volumes, and a volume at /${MANIFEST}`, async () => {
    const w = await world(['/data', '/logs', `/${MANIFEST}`]);
    await fsp.mkdir(path.join(w.at('/data'), 'sub'));
    await fsp.writeFile(path.join(w.at('/data'), MANIFEST), 'a file of the volume\n');
    await fsp.writeFile(path.join(w.at('/data'), 'sub', MANIFEST), 'another\n');
    await fsp.mkdir(path.join(w.at('/logs'), MANIFEST));
    await fsp.writeFile(path.join(w.at('/logs'), MANIFEST, 'inside'), 'inside a directory so named\n');
    await fsp.writeFile(path.join(w.at(`/${MANIFEST}`), 'x'), 'in the volume so named\n');
    const { result, restored } = await roundTrip(w);
    expect(result.volumes.map((v) => v.path).sort()).toEqual([`/${MANIFEST}`, '/data', '/logs']);
    for (const p of ['/data', '/logs', `/${MANIFEST}`]) expect(describeTree(w.hostPath(restored, p))).toEqual(describeTree(w.at(p)));
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });

  test('file capabilities and security.* / trusted.* extended attributes come back, as copy-up keeps them', async () => {
    const w = await world(['/data']);
    const tool = path.join(w.at('/data'), 'tool');
    await fsp.copyFile('/bin/true', tool);
    await fsp.chown(tool, 1000, 1000);
    execFileSync('setcap', ['cap_net_raw+ep', tool]);
    const file = path.join(w.at('/data'), 'f');
    await fsp.writeFile(file, 'f\n');
    execFileSync('setfattr', ['-n', 'trusted.t1', '-v', 'tv', file]);
    execFileSync('setfattr', ['-n', 'security.sec1', '-v', 'sv', file]);
    execFileSync('setfattr', ['-n', 'user.u1', '-v', 'uv', file]);
    const { restored } = await roundTrip(w);
    const copy = w.hostPath(restored, '/data');
    expect(execFileSync('getcap', [path.join(copy, 'tool')], { encoding: 'utf8' })).toContain('cap_net_raw=ep');
    const attrs = execFileSync('getfattr', ['-d', '-m', '-', path.join(copy, 'f')], { encoding: 'utf8' });
    for (const a of ['trusted.t1="tv"', 'security.sec1="sv"', 'user.u1="uv"']) expect(attrs).toContain(a);
    expect(describeTree(copy)).toEqual(describeTree(w.at('/data')));
  });
});

describe('backup of live and unusual volumes: it succeeds, or fails with a coded error', () => {
  test('names that are not UTF-8 are backed up and restored byte for byte', async () => {
    const w = await world(['/data']);
    const dir = Buffer.concat([Buffer.from(`${w.at('/data')}/`), Buffer.from([0x64, 0xff, 0xfe])]);
    fs.mkdirSync(dir);
    fs.writeFileSync(Buffer.concat([dir, Buffer.from('/'), Buffer.from([0x66, 0xe9, 0x80])]), 'latin-1 and a lone continuation byte\n');
    const { result, restored } = await roundTrip(w);
    expect(result.warnings).toEqual([]);
    const tree = describeTree(w.at('/data'));
    expect(Object.keys(tree)).toContain('d\\xff\\xfe/f\\xe9\\x80');
    expect(describeTree(w.hostPath(restored, '/data'))).toEqual(tree);
  });

  test('thirty backups of a volume another process writes to all succeed, reporting what changed as warnings', async () => {
    const w = await world(['/data']);
    const data = w.at('/data');
    for (let i = 0; i < 20; i++) await fsp.writeFile(path.join(data, `f${i}`), randomBytes(256 * 1024));
    // Rewrites, shrinks, deletes and re-creates files as fast as it can (each at most 256 KiB: the disk must not fill).
    const writer = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('fs'); const d = process.argv[1]; const b = Buffer.alloc(256 * 1024, 7);
         for (let i = 0; ; i = (i + 1) % 20) { const f = d + '/f' + i;
           try { if (i % 3 === 0) fs.rmSync(f, { force: true }); else if (i % 3 === 1) fs.writeFileSync(f, b.subarray(0, 1024)); else fs.writeFileSync(f, b); } catch {} }`,
        data,
      ],
      { stdio: 'ignore' },
    );
    const outcomes: Record<string, number> = {};
    const seenWarnings = new Set<string>();
    try {
      for (let i = 0; i < 30; i++) {
        const archive = path.join(w.dir, 'live.tar');
        try {
          const result = await w.runtime.backup(w.db.id, archive);
          for (const line of result.warnings) seenWarnings.add(line.replace(/^.*?: /, ''));
          outcomes[result.warnings.length > 0 ? 'succeeded with warnings' : 'succeeded'] = (outcomes[result.warnings.length > 0 ? 'succeeded with warnings' : 'succeeded'] ?? 0) + 1;
        } catch (error) {
          const key = `failed: ${(error as { code?: string }).code} ${(error as Error).message.slice(0, 200)}`;
          outcomes[key] = (outcomes[key] ?? 0) + 1;
        }
      }
    } finally {
      writer.kill('SIGKILL');
    }
    console.log(`30 backups of a volume being written: ${JSON.stringify(outcomes)}; warnings seen: ${JSON.stringify([...seenWarnings])}`);
    expect(Object.keys(outcomes).filter((k) => k.startsWith('failed'))).toEqual([]);
    // The last archive is a good one.
    const restored = await w.runtime.restore(path.join(w.dir, 'live.tar'), { rootfs: await w.rootfs('restored') });
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });

  test('a volume directory that is gone: ERR_VOLUME_NOT_FOUND, and nothing is left', async () => {
    const w = await world(['/data', '/logs']);
    await fsp.rm(w.at('/logs'), { recursive: true });
    const archive = path.join(w.dir, 'db.tar');
    const error = await expectCode(w.runtime.backup(w.db.id, archive), 'ERR_VOLUME_NOT_FOUND');
    expect(error.message).toContain(w.db.id);
    expect(error.message).toContain('/logs');
    expect(fs.existsSync(archive)).toBe(false);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('a hard link between two volumes: the backup restores, and the two names stay one file', async () => {
    const w = await world(['/data', '/data/nested', '/logs']);
    await fsp.writeFile(path.join(w.at('/data'), 'x'), 'shared by three volumes\n');
    await fsp.link(path.join(w.at('/data'), 'x'), path.join(w.at('/logs'), 'y'));
    await fsp.link(path.join(w.at('/data'), 'x'), path.join(w.at('/data/nested'), 'z'));
    await fsp.writeFile(path.join(w.at('/logs'), 'in-volume'), 'linked within /logs\n');
    await fsp.link(path.join(w.at('/logs'), 'in-volume'), path.join(w.at('/logs'), 'in-volume-2'));
    const { restored } = await roundTrip(w);
    const x = fs.statSync(path.join(w.hostPath(restored, '/data'), 'x'));
    const y = fs.statSync(path.join(w.hostPath(restored, '/logs'), 'y'));
    const z = fs.statSync(path.join(w.hostPath(restored, '/data/nested'), 'z'));
    expect([y.ino, z.ino]).toEqual([x.ino, x.ino]);
    expect(fs.readFileSync(path.join(w.hostPath(restored, '/logs'), 'y'), 'utf8')).toBe('shared by three volumes\n');
    expect(describeTree(w.hostPath(restored, '/logs'))).toEqual(describeTree(w.at('/logs')));
    expect(describeTree(w.hostPath(restored, '/data'), ['nested'])).toEqual(describeTree(w.at('/data'), ['nested']));
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });
});

// ---------------------------------------------------------------------------------------
// Everything in one container.

/** Fills /data, /data/nested and /logs with every kind of file and attribute a round trip keeps, and a socket (which tar skips). */
async function populate(w: World): Promise<{ socket: net.Server }> {
  const data = w.at('/data');
  const at = (...p: string[]) => path.join(data, ...p);
  const run = (command: string, ...args: string[]) => execFileSync(command, args, { stdio: 'pipe' });
  await fsp.mkdir(at('dir/sub'), { recursive: true });
  await fsp.writeFile(at('dir/sub/file'), 'plain\n');
  // Hard links inside a volume.
  await fsp.writeFile(at('linked'), 'one file, two names\n');
  await fsp.link(at('linked'), at('dir/linked-too'));
  // Extended attributes in every namespace, and ACLs (access and default).
  await fsp.writeFile(at('attrs'), 'attributes\n');
  run('setfattr', '-n', 'user.u1', '-v', 'user value', at('attrs'));
  run('setfattr', '-n', 'trusted.t1', '-v', 'trusted value', at('attrs'));
  run('setfattr', '-n', 'security.sec1', '-v', 'security value', at('attrs'));
  run('setfattr', '-n', 'user.on-dir', '-v', 'd', at('dir'));
  run('setfacl', '-m', 'u:1234:rx,g:5678:r', at('attrs'));
  run('setfacl', '-d', '-m', 'u:55:rwx', at('dir'));
  // A FIFO and device nodes.
  run('mkfifo', at('fifo'));
  run('mknod', at('null-like'), 'c', '1', '3');
  run('mknod', at('loop-like'), 'b', '7', '200');
  // setuid, setgid, sticky; a file capability on a file owned by another user.
  await fsp.writeFile(at('setuid'), '#!/bin/sh\n');
  await fsp.chmod(at('setuid'), 0o4755);
  await fsp.mkdir(at('setgid-dir'));
  await fsp.chmod(at('setgid-dir'), 0o2775);
  await fsp.mkdir(at('sticky-dir'));
  await fsp.chmod(at('sticky-dir'), 0o1777);
  await fsp.copyFile('/bin/true', at('capable'));
  await fsp.chown(at('capable'), 1000, 1000);
  run('setcap', 'cap_net_raw,cap_net_bind_service+ep', at('capable'));
  // Owners above 65,535, also of a symlink.
  await fsp.writeFile(at('big-ids'), 'uid 70000, gid 80000\n');
  await fsp.chown(at('big-ids'), 70_000, 80_000);
  await fsp.symlink('big-ids', at('big-ids-link'));
  await fsp.lchown(at('big-ids-link'), 100_000, 200_000);
  // A 255-byte name and names that are not UTF-8.
  await fsp.writeFile(at('n'.repeat(255)), 'longest name\n');
  fs.writeFileSync(Buffer.concat([Buffer.from(`${data}/`), Buffer.from([0x6e, 0xff, 0xc3, 0x28])]), 'not UTF-8\n');
  // A sparse file: 64 MiB, two 64 KiB chunks of data.
  const sparse = await fsp.open(at('sparse.img'), 'w');
  await sparse.truncate(64 * MiB);
  for (const offset of [5 * MiB, 64 * MiB - 64 * 1024]) await sparse.write(randomBytes(64 * 1024), 0, 64 * 1024, offset);
  await sparse.close();
  // The nested volume and another one.
  await fsp.writeFile(path.join(w.at('/data/nested'), 'inner'), 'nested\n');
  await fsp.chmod(w.at('/data/nested'), 0o1777);
  await fsp.writeFile(path.join(w.at('/logs'), 'log'), 'log\n');
  run('setfattr', '-n', 'trusted.root', '-v', 'on the volume root', w.at('/logs'));
  await fsp.chown(w.at('/logs'), 70_001, 80_001);
  // A path deeper than PATH_MAX, with a hard link inside it (walked by deepListing).
  execFileSync('perl', ['-e', 'chdir $ARGV[0] or die; for (1..22) { mkdir "p" x 200 or die; chdir "p" x 200 or die } open my $f, ">", "deep" or die; print $f "deep\\n"; close $f; link "deep", "deep-too" or die; chmod 0640, "deep";', data]);
  // A socket: tar skips it, saying so.
  const socket = net.createServer();
  await new Promise<void>((resolve) => socket.listen(at('socket'), resolve));
  // Nanosecond modification times, last (every change above moved them): files, directories, symlinks, volume roots.
  // find hands touch the names as bytes, from each one's directory (any depth); each volume gets its own time, its root another.
  for (const [i, dir] of [data, w.at('/data/nested'), w.at('/logs')].entries()) {
    run('find', dir, '-mindepth', '1', '-not', '-type', 's', '-execdir', 'touch', '-h', '-d', `@${1_000_000_000 + i}.123456789`, '{}', '+');
    run('touch', '-d', `@${1_100_000_000 + i}.987654321`, dir);
  }
  return { socket };
}

describe('backup → restore keeps everything of every volume (one container)', () => {
  test('hard links, xattrs of every namespace, ACLs, FIFOs, devices, setuid/setgid/sticky, capabilities, ns mtimes, odd names, sparse files, big ids', async () => {
    const w = await world(['/data', '/data/nested', '/logs']);
    const { socket } = await populate(w);
    const archive = path.join(w.dir, 'db.tar');
    let result, original;
    try {
      result = await w.runtime.backup(w.db.id, archive);
      original = {
        '/data': describeTree(w.at('/data'), ['nested']),
        '/data/nested': describeTree(w.at('/data/nested')),
        '/logs': describeTree(w.at('/logs')),
      };
    } finally {
      // Closing the server removes the socket file; a server left open would keep jest running.
      await new Promise((resolve) => socket.close(resolve));
    }
    expect(result.warnings).toEqual([expect.stringMatching(/data\/socket: socket ignored/)]);
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    const copy = {
      '/data': describeTree(w.hostPath(restored, '/data'), ['nested']),
      '/data/nested': describeTree(w.hostPath(restored, '/data/nested')),
      '/logs': describeTree(w.hostPath(restored, '/logs')),
    };
    // Sockets excepted, as tar does.
    expect(original['/data']['socket']).toMatchObject({ type: 'socket' });
    delete original['/data']['socket'];
    expect(copy).toEqual(original);
    expect(deepListing(w.hostPath(restored, '/data')).filter((l) => l.startsWith('p'))).toEqual(deepListing(w.at('/data')).filter((l) => l.startsWith('p')));
    expect(deepListing(w.hostPath(restored, '/data')).find((l) => l.includes('/deep-too '))).toMatch(/ f 640 0 0 1000000000\.1234567890 5 2$/);

    // Spot checks, so that a walker that saw nothing cannot pass.
    const data = copy['/data'];
    expect(data['linked']).toMatchObject({ sameFileAs: 'dir/linked-too' });
    expect(data['attrs']!.xattrs).toMatchObject({
      'user.u1': expect.any(String),
      'trusted.t1': expect.any(String),
      'security.sec1': expect.any(String),
      'system.posix_acl_access': expect.any(String),
    });
    expect(data['dir']!.xattrs).toMatchObject({ 'system.posix_acl_default': expect.any(String), 'user.on-dir': expect.any(String) });
    expect(data['capable']!.xattrs).toMatchObject({ 'security.capability': expect.any(String) });
    expect(execFileSync('getcap', [path.join(w.hostPath(restored, '/data'), 'capable')], { encoding: 'utf8' })).toMatch(/cap_net_bind_service,cap_net_raw=ep/);
    expect(data['fifo']).toMatchObject({ type: 'fifo' });
    expect(data['null-like']).toMatchObject({ type: 'chardev' });
    expect(data['loop-like']).toMatchObject({ type: 'blockdev' });
    expect(data['setuid']).toMatchObject({ mode: '4755' });
    expect(data['setgid-dir']).toMatchObject({ mode: '2775' });
    expect(data['sticky-dir']).toMatchObject({ mode: '1777' });
    expect(data['big-ids']).toMatchObject({ uid: 70_000, gid: 80_000 });
    expect(data['big-ids-link']).toMatchObject({ uid: 100_000, gid: 200_000 });
    expect(data['n'.repeat(255)]).toMatchObject({ type: 'file' });
    expect(data['n\\xff\\xc3(']).toMatchObject({ type: 'file' });
    expect(data['attrs']!.mtimeNs).toBe('1000000000123456789');
    expect(copy['/logs']['.']).toMatchObject({ uid: 70_001, gid: 80_001, mtimeNs: '1100000002987654321', xattrs: { 'trusted.root': expect.any(String) } });
    expect(copy['/data/nested']['.']).toMatchObject({ mode: '1777' });
    // Holes stay holes.
    const allocated = (p: string) => fs.statSync(path.join(p, 'sparse.img')).blocks * 512;
    expect(allocated(w.at('/data'))).toBeLessThan(MiB);
    expect(allocated(w.hostPath(restored, '/data'))).toBeLessThan(MiB);
    expect(fs.statSync(path.join(w.hostPath(restored, '/data'), 'sparse.img')).size).toBe(64 * MiB);
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });
});

describe('a path deeper than PATH_MAX (4,096 bytes) inside a volume', () => {
  /** 25 nested directories of 200-byte names (5,025 bytes) and a file at the bottom, made one relative step at a time (a shell's cd would build the whole path). */
  function deepTree(dir: string): void {
    const script = 'chdir $ARGV[0] or die; for (1..25) { mkdir "d" x 200 or die; chdir "d" x 200 or die } open my $f, ">", "leaf" or die; print $f "leaf\\n";';
    execFileSync('perl', ['-e', script, dir]);
  }

  test('backup succeeds (its size estimate walks any depth), and restore brings the deep file back with its content, mode and mtime', async () => {
    const w = await world(['/data']);
    deepTree(w.at('/data'));
    const archive = path.join(w.dir, 'deep.tar');
    const result = await w.runtime.backup(w.db.id, archive);
    expect(result.warnings).toEqual([]);
    const leaf = execFileSync('tar', ['--list', `--file=${archive}`], { maxBuffer: 64 * MiB, encoding: 'utf8' })
      .split('\n')
      .find((m) => m.endsWith('/leaf'));
    expect(leaf?.length).toBeGreaterThan(5000);
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    // Read one relative step at a time: no absolute path reaches the leaf.
    const script = 'chdir $ARGV[0] or die; for (1..25) { chdir "d" x 200 or die } my @s = lstat "leaf" or die; open my $f, "<", "leaf" or die; local $/; printf "%o %s %s", $s[2] & 07777, $s[9], scalar <$f>;';
    const read = (dir: string) => execFileSync('perl', ['-e', script, dir], { encoding: 'utf8' });
    expect(read(w.hostPath(restored, '/data'))).toBe(read(w.at('/data')));
    expect(read(w.hostPath(restored, '/data'))).toMatch(/^644 \d+ leaf\n$/);
    expect(deepListing(w.hostPath(restored, '/data'))).toEqual(deepListing(w.at('/data')));
    // Removing it walks the whole depth too.
    await w.runtime.remove(restored.id, { volumes: true });
    await expectNothingLeft(w, [w.db.id]);
  });
});

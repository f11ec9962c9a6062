import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter } from '../../src/index.js';
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  MNT_DETACH,
  MOUNT_ATTR_NODEV,
  MOUNT_ATTR_NOSUID,
  MOUNT_ATTR_RDONLY,
  MOVE_MOUNT_F_EMPTY_PATH,
  MOVE_MOUNT_T_EMPTY_PATH,
  MS_PRIVATE,
  O_CLOEXEC,
  O_DIRECTORY,
  O_PATH,
  OPEN_TREE_CLOEXEC,
  OPEN_TREE_CLONE,
  RESOLVE_IN_ROOT,
  RESOLVE_NO_MAGICLINKS,
  ST_NODEV,
  ST_NOSUID,
  ST_RDONLY,
  STATX_ATTR_MOUNT_ROOT,
  STATX_INO,
  STATX_MNT_ID,
} from '../../src/mounter/kernel/constants.js';
import { kernelMountApi } from '../../src/mounter/kernel/probe.js';
import { KernelCallError, type KernelCalls } from '../../src/mounter/kernel/syscalls.js';
import { cleanupTemp, expectCode, tempDir } from '../helpers/fixtures.js';
import { logSpawns, mountTable, mountsUnder, tenVolumeRequests, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * The kernel engine: every binding called for real (a wrong prototype or struct layout
 * would crash the process, so each has its test), then the engine's own guarantees.
 */

const OPEN_DIRECTORY = O_PATH | O_DIRECTORY | O_CLOEXEC;
const IN_ROOTFS = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
const repo = fileURLToPath(new URL('../..', import.meta.url));

let base: string;
let calls: KernelCalls;
const kernel = () => new BindMounter({ engine: 'kernel' });

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('kernel-');
  const api = kernelMountApi();
  if (!api.calls) throw new Error(`the kernel engine must run on the test machines: ${api.reason}`);
  calls = api.calls;
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

async function dirs(): Promise<{ dir: string; rootfs: string; source: string; other: string }> {
  const dir = await fs.promises.mkdtemp(path.join(base, 'case-'));
  const [rootfs, source, other] = ['rootfs', 'source', 'other'].map((d) => path.join(dir, d)) as [string, string, string];
  for (const d of [rootfs, source, other]) fs.mkdirSync(d);
  fs.writeFileSync(path.join(source, 'marker'), 'volume data');
  return { dir, rootfs, source, other };
}

function openDir(p: string): number {
  return fs.openSync(p, O_PATH | O_DIRECTORY);
}

/** Expects a KernelCallError shaped like Node's system errors. */
function expectErrno(call: () => unknown, code: string, syscall: string): void {
  let caught: unknown;
  try {
    call();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(KernelCallError);
  expect(caught).toMatchObject({ code, syscall, errno: expect.any(Number) });
  expect((caught as Error).message).toContain(code);
}

/** This process's open descriptors, as the kernel lists them. */
const openDescriptors = () => fs.readdirSync('/proc/self/fd').map(Number).sort((a, b) => a - b);

const mountIdInMountinfo = (mountPoint: string) => mountTable().filter((m) => m.mountPoint === mountPoint).pop()?.id;

describe('the bindings, each called for real', () => {
  test('openat2 resolves inside the root it is given (a link climbing out lands inside), and says ENOENT, ENOTDIR, ELOOP', async () => {
    const { rootfs } = await dirs();
    fs.mkdirSync(path.join(rootfs, 'run/db'), { recursive: true });
    fs.mkdirSync(path.join(rootfs, 'var'));
    fs.symlinkSync('../../../../../../run', path.join(rootfs, 'var/run'));
    fs.writeFileSync(path.join(rootfs, 'file'), 'x');
    const root = openDir(rootfs);
    try {
      const fd = calls.openat2(root, '/var/run/db', OPEN_DIRECTORY, IN_ROOTFS);
      expect(fs.readlinkSync(`/proc/self/fd/${fd}`)).toBe(path.join(rootfs, 'run/db'));
      calls.close(fd);
      expectErrno(() => calls.openat2(root, '/missing', OPEN_DIRECTORY, IN_ROOTFS), 'ENOENT', 'openat2');
      expectErrno(() => calls.openat2(root, '/file/below', OPEN_DIRECTORY, IN_ROOTFS), 'ENOTDIR', 'openat2');
      expectErrno(() => calls.openat2(AT_FDCWD, '/proc/self/root', OPEN_DIRECTORY, RESOLVE_NO_MAGICLINKS), 'ELOOP', 'openat2');
    } finally {
      fs.closeSync(root);
    }
  });

  test('open_tree clones a directory into a detached mount, and says ENOENT for a missing one', async () => {
    const { source } = await dirs();
    const tree = calls.openTree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    try {
      expect(fs.readFileSync(`/proc/self/fd/${tree}/marker`, 'utf8')).toBe('volume data');
      // Detached: a mount of its own, that no mount point shows.
      const { mountId, attributes } = calls.statx(tree, '', AT_EMPTY_PATH, STATX_MNT_ID);
      expect(attributes & STATX_ATTR_MOUNT_ROOT).toBe(STATX_ATTR_MOUNT_ROOT);
      expect(mountTable().map((m) => m.id)).not.toContain(mountId);
    } finally {
      calls.close(tree);
    }
    expectErrno(() => calls.openTree(AT_FDCWD, path.join(source, 'missing'), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), 'ENOENT', 'open_tree');
  });

  test('mount_setattr sets the flags of a detached mount (fstatvfs shows them), and says EBADF and EINVAL', async () => {
    const { source } = await dirs();
    const tree = calls.openTree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    try {
      expect(calls.mountFlags(tree) & (ST_RDONLY | ST_NOSUID | ST_NODEV)).toBe(0);
      calls.mountSetattr(tree, '', AT_EMPTY_PATH, { attrSet: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, attrClr: 0, propagation: MS_PRIVATE });
      expect(calls.mountFlags(tree) & (ST_RDONLY | ST_NOSUID | ST_NODEV)).toBe(ST_RDONLY | ST_NOSUID | ST_NODEV);
      expect(() => fs.writeFileSync(`/proc/self/fd/${tree}/x`, 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
      // A flag the kernel does not know.
      expectErrno(() => calls.mountSetattr(tree, '', AT_EMPTY_PATH, { attrSet: 0x40000000, attrClr: 0, propagation: 0 }), 'EINVAL', 'mount_setattr');
    } finally {
      calls.close(tree);
    }
    expectErrno(() => calls.mountSetattr(-1, '', AT_EMPTY_PATH, { attrSet: MOUNT_ATTR_RDONLY, attrClr: 0, propagation: 0 }), 'EBADF', 'mount_setattr');
  });

  test('move_mount attaches a detached mount onto a directory held by a descriptor, and says EBADF', async () => {
    const { rootfs, source } = await dirs();
    fs.mkdirSync(path.join(rootfs, 'data'));
    const tree = calls.openTree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    const target = openDir(path.join(rootfs, 'data'));
    try {
      calls.moveMount(tree, '', target, '', MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
      expect(fs.readFileSync(path.join(rootfs, 'data/marker'), 'utf8')).toBe('volume data');
      expect(mountIdInMountinfo(path.join(rootfs, 'data'))).toBe(calls.statx(tree, '', AT_EMPTY_PATH, STATX_MNT_ID).mountId);
      expectErrno(() => calls.moveMount(-1, '', target, '', MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH), 'EBADF', 'move_mount');
    } finally {
      calls.close(target);
      calls.close(tree);
      unmountAllUnder(rootfs);
    }
  });

  test('umount2 runs off the event loop and detaches the mount a /proc/<pid>/fd link names; it says EINVAL and ENOENT', async () => {
    const { rootfs, source } = await dirs();
    const at = path.join(rootfs, 'data');
    fs.mkdirSync(at);
    execFileSync('mount', ['--bind', source, at]);
    const fd = openDir(at);
    try {
      const pending = calls.umount2(`/proc/${process.pid}/fd/${fd}`, MNT_DETACH);
      expect(pending).toBeInstanceOf(Promise);
      await pending;
    } finally {
      fs.closeSync(fd);
    }
    expect(mountsUnder(at)).toEqual([]);
    await expect(calls.umount2(at, MNT_DETACH)).rejects.toMatchObject({ code: 'EINVAL', syscall: 'umount2', path: at });
    await expect(calls.umount2(path.join(rootfs, 'missing'), 0)).rejects.toMatchObject({ code: 'ENOENT', syscall: 'umount2' });
  });

  test('mkdirat makes a directory below a descriptor, and says EEXIST and ENOENT', async () => {
    const { rootfs } = await dirs();
    const root = openDir(rootfs);
    try {
      calls.mkdirat(root, 'made', 0o750);
      expect(fs.statSync(path.join(rootfs, 'made')).mode & 0o7777).toBe(0o750 & ~process.umask());
      expectErrno(() => calls.mkdirat(root, 'made', 0o755), 'EEXIST', 'mkdirat');
      expectErrno(() => calls.mkdirat(root, 'missing/below', 0o755), 'ENOENT', 'mkdirat');
    } finally {
      fs.closeSync(root);
    }
  });

  test('statx gives the mount id mountinfo shows, the inode, and whether a directory is a mount root; it says ENOENT and EBADF', async () => {
    const { rootfs, source } = await dirs();
    const at = path.join(rootfs, 'data');
    fs.mkdirSync(path.join(at, 'below'), { recursive: true });
    execFileSync('mount', ['--bind', source, at]);
    const fd = openDir(at);
    const below = openDir(rootfs);
    try {
      const top = calls.statx(fd, '', AT_EMPTY_PATH, STATX_MNT_ID | STATX_INO);
      expect(top.mountId).toBe(mountIdInMountinfo(at));
      expect(top.ino).toBe(BigInt(fs.statSync(source).ino));
      expect(top.attributes & STATX_ATTR_MOUNT_ROOT).toBe(STATX_ATTR_MOUNT_ROOT);
      expect(top.attributesMask & STATX_ATTR_MOUNT_ROOT).toBe(STATX_ATTR_MOUNT_ROOT);
      expect(calls.statx(below, '', AT_EMPTY_PATH, STATX_MNT_ID).attributes & STATX_ATTR_MOUNT_ROOT).toBe(0);
      expectErrno(() => calls.statx(below, 'missing', 0, STATX_MNT_ID), 'ENOENT', 'statx');
      expectErrno(() => calls.statx(-1, '', AT_EMPTY_PATH, STATX_MNT_ID), 'EBADF', 'statx');
    } finally {
      fs.closeSync(fd);
      fs.closeSync(below);
      execFileSync('umount', [at]);
    }
  });

  test('fstatvfs gives the flags of the mount a descriptor is on, and says EBADF', async () => {
    const { rootfs, source } = await dirs();
    const at = path.join(rootfs, 'data');
    fs.mkdirSync(at);
    execFileSync('mount', ['--bind', '-o', 'ro,nosuid', source, at]);
    const fd = openDir(at);
    try {
      expect(calls.mountFlags(fd) & (ST_RDONLY | ST_NOSUID | ST_NODEV)).toBe(ST_RDONLY | ST_NOSUID);
    } finally {
      fs.closeSync(fd);
      execFileSync('umount', [at]);
    }
    expectErrno(() => calls.mountFlags(-1), 'EBADF', 'fstatvfs');
  });

  test('close closes a descriptor, and says EBADF for one already closed', async () => {
    const { rootfs } = await dirs();
    const fd = calls.openat2(AT_FDCWD, rootfs, OPEN_DIRECTORY, 0);
    calls.close(fd);
    expectErrno(() => calls.close(fd), 'EBADF', 'close');
  });
});

describe('the kernel engine', () => {
  test('is the default here, and mounter.engine says which engine a BindMounter uses', () => {
    expect(kernel().engine).toBe('kernel');
    expect(new BindMounter({ engine: 'util-linux' }).engine).toBe('util-linux');
    const saved = process.env.CONTAINER_VOLUMES_MOUNT_ENGINE;
    try {
      process.env.CONTAINER_VOLUMES_MOUNT_ENGINE = 'util-linux';
      expect(new BindMounter().engine).toBe('util-linux');
      expect(new BindMounter({ engine: 'kernel' }).engine).toBe('kernel');
      process.env.CONTAINER_VOLUMES_MOUNT_ENGINE = 'kernel';
      expect(new BindMounter().engine).toBe('kernel');
      delete process.env.CONTAINER_VOLUMES_MOUNT_ENGINE;
      expect(new BindMounter().engine).toBe('kernel');
    } finally {
      if (saved === undefined) delete process.env.CONTAINER_VOLUMES_MOUNT_ENGINE;
      else process.env.CONTAINER_VOLUMES_MOUNT_ENGINE = saved;
    }
  });

  test('bad options and an unknown engine are ERR_INVALID_ARGUMENT; a forced engine that cannot run is ERR_MOUNT_ENGINE_UNAVAILABLE', () => {
    const construct = (options: unknown) => () => new BindMounter(options as object);
    for (const bad of ['kernel', 42, null, [], { engine: 'fuse' }, { engine: 1 }, { engines: 'kernel' }]) {
      expect(construct(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    const savedEngine = process.env.CONTAINER_VOLUMES_MOUNT_ENGINE;
    const savedPath = process.env.PATH;
    try {
      process.env.CONTAINER_VOLUMES_MOUNT_ENGINE = 'Kernel';
      expect(construct(undefined)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('CONTAINER_VOLUMES_MOUNT_ENGINE') }));
      delete process.env.CONTAINER_VOLUMES_MOUNT_ENGINE;
      process.env.PATH = base;
      expect(construct({ engine: 'util-linux' })).toThrow(
        expect.objectContaining({ code: 'ERR_MOUNT_ENGINE_UNAVAILABLE', message: expect.stringContaining('mount and umount not found on PATH') }),
      );
      // The kernel engine needs no program.
      expect(kernel().engine).toBe('kernel');
    } finally {
      process.env.PATH = savedPath;
      if (savedEngine === undefined) delete process.env.CONTAINER_VOLUMES_MOUNT_ENGINE;
      else process.env.CONTAINER_VOLUMES_MOUNT_ENGINE = savedEngine;
    }
  });

  test('a 10-volume container is mounted and unmounted without spawning a single process', async () => {
    const { dir, rootfs } = await dirs();
    const requests = tenVolumeRequests(dir, rootfs);
    const { log, restore } = logSpawns(dir, ['mount', 'umount', 'nsenter']);
    const mounter = kernel();
    const descriptors = openDescriptors();
    try {
      await mounter.mountAll(requests);
      for (let i = 0; i < 10; i++) expect(fs.readFileSync(path.join(rootfs, 'data', String(i), 'marker'), 'utf8')).toBe(`volume ${i}`);
      expect(mountsUnder(rootfs).map((m) => [m.mountPoint, m.options.includes('ro') ? 'ro' : 'rw', m.optional])).toEqual(
        requests.map((r) => [path.join(rootfs, r.path), r.mode, []]),
      );
      for (const m of mountsUnder(rootfs)) expect(m.options).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
      await mounter.unmountAll([...requests].reverse());
    } finally {
      restore();
    }
    expect(fs.existsSync(log)).toBe(false);
    expect(mountsUnder(rootfs)).toEqual([]);
    // Not one descriptor left open: one would keep a mount busy (a plain umount fails).
    expect(openDescriptors()).toEqual(descriptors);
  });

  const hasStrace = spawnSync('strace', ['-V']).status === 0;
  (hasStrace ? test : test.skip)('a read-only mount is read-only from its first instant: made detached, made read-only, then attached (strace)', async () => {
    const { dir, rootfs, source } = await dirs();
    const trace = path.join(dir, 'trace');
    const script = `
      import { BindMounter } from ${JSON.stringify(path.join(repo, 'dist/index.js'))};
      const mounter = new BindMounter({ engine: 'kernel' });
      await mounter.mountAll([{ source: ${JSON.stringify(source)}, rootfs: ${JSON.stringify(rootfs)}, path: '/data', mode: 'ro' }]);
      await mounter.unmountAll([{ rootfs: ${JSON.stringify(rootfs)}, path: '/data' }]);
    `;
    execFileSync('strace', ['-f', '-o', trace, '-e', 'trace=mount,open_tree,mount_setattr,move_mount,umount2', process.execPath, '--input-type=module', '-e', script]);
    const lines = fs.readFileSync(trace, 'utf8').split('\n').filter((l) => /(mount|open_tree|mount_setattr|move_mount|umount2)\(/.test(l));
    // The probe's harmless calls come first; the mount's begin with its OPEN_TREE_CLONE.
    const calls = lines.map((l) => /^\d+\s+(\w+)\(/.exec(l)?.[1]);
    const clone = lines.findIndex((l) => l.includes(source) && l.includes('OPEN_TREE_CLONE'));
    expect(clone).toBeGreaterThanOrEqual(0);
    expect(calls).not.toContain('mount');
    expect(calls.slice(clone)).toEqual(['open_tree', 'mount_setattr', 'move_mount', 'umount2']);
    expect(lines[clone + 1]).toMatch(/MOUNT_ATTR_RDONLY/);
    expect(lines[clone + 3]).toMatch(new RegExp(`umount2\\("/proc/\\d+/fd/\\d+", MNT_DETACH\\) = 0`));
    // Made on a worker thread (strace -f tells threads apart): a hung unmount cannot freeze the event loop.
    const thread = (line: string | undefined) => /^(\d+)\s/.exec(line ?? '')?.[1];
    expect(thread(lines[clone + 3])).not.toBe(thread(lines[clone]));
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a read-only parent with a child inside: the mount point is made in the volume before it turns read-only', async () => {
    const { rootfs, source, other } = await dirs();
    const mounter = kernel();
    await mounter.mountAll([
      { source, rootfs, path: '/srv', mode: 'ro' },
      { source: other, rootfs, path: '/srv/cache/inner', mode: 'rw' },
    ]);
    expect(fs.statSync(path.join(source, 'cache/inner')).isDirectory()).toBe(true);
    expect(mountsUnder(rootfs).map((m) => [path.relative(rootfs, m.mountPoint), m.options.includes('ro') ? 'ro' : 'rw'])).toEqual([
      ['srv', 'ro'],
      ['srv/cache/inner', 'rw'],
    ]);
    expect(() => fs.writeFileSync(path.join(rootfs, 'srv/x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    fs.writeFileSync(path.join(rootfs, 'srv/cache/inner/y'), 'y');
    expect(fs.readFileSync(path.join(other, 'y'), 'utf8')).toBe('y');

    // Below a read-only mount made by an earlier call, nothing can be made.
    const error = await expectCode(mounter.mount({ source: other, rootfs, path: '/srv/later', mode: 'rw' }), 'ERR_MOUNT_POINT_READ_ONLY');
    expect(error.message).toContain('/srv/later');
    expect(fs.existsSync(path.join(source, 'later'))).toBe(false);
    await mounter.unmountAll([
      { rootfs, path: '/srv/cache/inner' },
      { rootfs, path: '/srv' },
    ]);
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('two paths of one call resolving to one directory are ERR_DUPLICATE_MOUNT_POINT, and nothing stays mounted', async () => {
    const { rootfs, source, other } = await dirs();
    fs.mkdirSync(path.join(rootfs, 'run/db'), { recursive: true });
    fs.mkdirSync(path.join(rootfs, 'var'));
    fs.symlinkSync('../run', path.join(rootfs, 'var/run'));
    const mounter = kernel();
    const descriptors = openDescriptors();
    for (const second of ['/var/run/db', '/run/db']) {
      const error = await expectCode(
        mounter.mountAll([
          { source, rootfs, path: '/run/db', mode: 'rw' },
          { source: other, rootfs, path: second, mode: 'ro' },
        ]),
        'ERR_DUPLICATE_MOUNT_POINT',
      );
      expect(error.message).toContain(second);
      expect(mountsUnder(rootfs)).toEqual([]);
    }
    expect(openDescriptors()).toEqual(descriptors);
    // Through the link, one at a time, it lands inside the rootfs.
    await mounter.mount({ source, rootfs, path: '/var/run/db', mode: 'ro' });
    expect(mountsUnder(rootfs).map((m) => m.mountPoint)).toEqual([path.join(rootfs, 'run/db')]);
    await mounter.unmount({ rootfs, path: '/var/run/db' });
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a path resolving to the rootfs itself is refused, and unmounting it never detaches the rootfs', async () => {
    const { rootfs, source } = await dirs();
    fs.symlinkSync('/', path.join(rootfs, 'top'));
    const mounter = kernel();
    const error = await expectCode(mounter.mount({ source, rootfs, path: '/top', mode: 'rw' }), 'ERR_INVALID_VOLUME_PATH');
    expect(error.message).toContain('/top');
    expect(mountsUnder(rootfs)).toEqual([]);
    execFileSync('mount', ['--bind', rootfs, rootfs]);
    try {
      await mounter.unmount({ rootfs, path: '/top' });
      expect(mountsUnder(rootfs).map((m) => m.mountPoint)).toEqual([rootfs]);
    } finally {
      unmountAllUnder(rootfs);
    }
  });

  test('unmount detaches the mount it resolved inside the rootfs, by identity: a plain directory or a missing path is left alone', async () => {
    const { rootfs, source, other } = await dirs();
    const mounter = kernel();
    await mounter.mountAll([
      { source, rootfs, path: '/data', mode: 'rw' },
      { source: other, rootfs, path: '/data/inner', mode: 'rw' },
    ]);
    fs.mkdirSync(path.join(rootfs, 'plain'));
    await mounter.unmountAll([
      { rootfs, path: '/plain' },
      { rootfs, path: '/data/marker-dir' },
      { rootfs, path: '/never' },
    ]);
    expect(mountsUnder(rootfs)).toHaveLength(2);
    // A mount stacked on another: the topmost goes, the one below stays.
    await mounter.mount({ source: other, rootfs, path: '/data', mode: 'ro' });
    await mounter.unmount({ rootfs, path: '/data' });
    expect(mountsUnder(rootfs).map((m) => [path.relative(rootfs, m.mountPoint), m.root])).toEqual([
      ['data', source],
      ['data/inner', other],
    ]);
    await mounter.unmountAll([
      { rootfs, path: '/data/inner' },
      { rootfs, path: '/data' },
    ]);
    expect(mountsUnder(rootfs)).toEqual([]);
  });
});

describe('BindMounter without the privilege to mount', () => {
  test.each(['kernel', 'util-linux'])('%s engine: constructing and listing work, mounting is ERR_MOUNT_PERMISSION_DENIED saying what to do, and nothing is made', async (engine) => {
    const { rootfs, source } = await dirs();
    const script = `
      import { BindMounter } from ${JSON.stringify(path.join(repo, 'dist/index.js'))};
      const mounter = new BindMounter({ engine: ${JSON.stringify(engine)} });
      const listed = await mounter.list(${JSON.stringify(rootfs)});
      const result = { engine: mounter.engine, listed };
      try {
        await mounter.mount({ source: ${JSON.stringify(source)}, rootfs: ${JSON.stringify(rootfs)}, path: '/data', mode: 'rw' });
      } catch (error) {
        result.code = error.code;
        result.message = error.message;
      }
      console.log(JSON.stringify(result));
    `;
    // Root, but with CAP_SYS_ADMIN gone from every set: what a container's root often is.
    const out = execFileSync('setpriv', ['--inh-caps=-sys_admin', '--bounding-set=-sys_admin', '--', process.execPath, '--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    const result = JSON.parse(out) as { engine: string; listed: unknown[]; code?: string; message?: string };
    expect(result).toMatchObject({ engine, listed: [], code: 'ERR_MOUNT_PERMISSION_DENIED' });
    expect(result.message).toMatch(/CAP_SYS_ADMIN/);
    expect(result.message).toMatch(/FakeMounter/);
    expect(result.message).toContain('/data');
    expect(fs.readdirSync(rootfs)).toEqual([]);
  });
});

describe('an install without koffi', () => {
  /** A copy of the built package whose node_modules has every dependency but koffi. */
  async function installWithoutKoffi(): Promise<string> {
    const dir = await fs.promises.mkdtemp(path.join(base, 'no-koffi-'));
    fs.cpSync(path.join(repo, 'dist'), path.join(dir, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(repo, 'package.json'), path.join(dir, 'package.json'));
    fs.mkdirSync(path.join(dir, 'node_modules'));
    for (const name of fs.readdirSync(path.join(repo, 'node_modules'))) {
      if (name === 'koffi' || name === '@koromix' || name === '.bin') continue;
      fs.symlinkSync(path.join(repo, 'node_modules', name), path.join(dir, 'node_modules', name));
    }
    return dir;
  }

  test.each([
    ['ESM', 'index.js', (dist: string) => `const { BindMounter } = await import(${JSON.stringify(dist)});`],
    ['CommonJS', 'index.cjs', (dist: string) => `const { BindMounter } = require(${JSON.stringify(dist)});`],
  ])('%s: BindMounter falls back to util-linux, says why, mounts for real, and refuses a forced kernel engine', async (_, file, load) => {
    const install = await installWithoutKoffi();
    const { rootfs, source } = await dirs();
    const script = `(async () => {
      ${load(path.join(install, 'dist', file))}
      const mounter = new BindMounter();
      await mounter.mount({ source: ${JSON.stringify(source)}, rootfs: ${JSON.stringify(rootfs)}, path: '/data', mode: 'ro' });
      const fs = require('node:fs');
      const seen = fs.readFileSync(${JSON.stringify(path.join(rootfs, 'data/marker'))}, 'utf8');
      const listed = await mounter.list(${JSON.stringify(rootfs)});
      await mounter.unmount({ rootfs: ${JSON.stringify(rootfs)}, path: '/data' });
      let forced;
      try { new BindMounter({ engine: 'kernel' }); } catch (error) { forced = { code: error.code, message: error.message }; }
      console.log(JSON.stringify({ engine: mounter.engine, seen, listed: listed.map((m) => [m.path, m.mode]), forced }));
    })().catch((error) => { console.error(error); process.exit(1); });`;
    const child = spawnSync(process.execPath, ['-e', script], {
      cwd: install,
      encoding: 'utf8',
      env: { ...process.env, DEBUG: 'container-volumes:mount', CONTAINER_VOLUMES_MOUNT_ENGINE: '' },
    });
    expect(child.status).toBe(0);
    const result = JSON.parse(child.stdout) as { engine: string; seen: string; listed: unknown; forced: { code: string; message: string } };
    expect(result).toMatchObject({ engine: 'util-linux', seen: 'volume data', listed: [['/data', 'ro']], forced: { code: 'ERR_MOUNT_ENGINE_UNAVAILABLE' } });
    expect(result.forced.message).toMatch(/koffi/);
    expect(child.stderr).toMatch(/engine util-linux: the kernel's mount API cannot be used: koffi \(an optional dependency\) could not be loaded/);
    expect(mountsUnder(rootfs)).toEqual([]);
  });
});

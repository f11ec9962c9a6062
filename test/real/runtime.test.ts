import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir, withoutNamespaceRegistry } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('runtime-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

async function world() {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const rootfs = (name: string) => {
    const p = path.join(dir, 'rootfs', name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  };
  return { dir, root, rootfs, runtime: new ContainerRuntime({ root, mounter: new BindMounter() }) };
}

/** [mount point relative to `dir`, host source, ro|rw] for every mount under `dir`. */
function table(dir: string) {
  return mountsUnder(dir).map((m) => [path.relative(dir, m.mountPoint), m.root, m.options.includes('ro') ? 'ro' : 'rw']);
}

describe('the seed story with real bind mounts', () => {
  test('data written through one container is read through another that shares its volumes; :ro refuses writes', async () => {
    const { dir, root, rootfs, runtime } = await world();
    const dbRoot = rootfs('db');
    const db = await runtime.create({ rootfs: dbRoot, volumes: ['/var/lib/postgres', '/var/log'] });
    const job = await runtime.create({ rootfs: rootfs('job'), volumesFrom: [db.id] });
    const reader = await runtime.create({ rootfs: rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    expect(table(dir)).toEqual([]);

    for (const c of [db, job, reader]) await runtime.mount(c.id);
    const vol = (p: string) => path.join(root, 'volumes', db.volumes.find((v) => v.path === p)!.volumeId);
    expect(table(dir)).toEqual([
      ['rootfs/db/var/log', vol('/var/log'), 'rw'],
      ['rootfs/db/var/lib/postgres', vol('/var/lib/postgres'), 'rw'],
      ['rootfs/job/var/log', vol('/var/log'), 'rw'],
      ['rootfs/job/var/lib/postgres', vol('/var/lib/postgres'), 'rw'],
      ['rootfs/reader/var/log', vol('/var/log'), 'ro'],
      ['rootfs/reader/var/lib/postgres', vol('/var/lib/postgres'), 'ro'],
    ]);

    fs.writeFileSync(path.join(dbRoot, 'var/lib/postgres/PG_VERSION'), '16\n');
    expect(fs.readFileSync(path.join(job.rootfs, 'var/lib/postgres/PG_VERSION'), 'utf8')).toBe('16\n');
    expect(fs.readFileSync(path.join(reader.rootfs, 'var/lib/postgres/PG_VERSION'), 'utf8')).toBe('16\n');
    fs.writeFileSync(path.join(job.rootfs, 'var/log/backup.log'), 'done\n');
    expect(fs.readFileSync(path.join(dbRoot, 'var/log/backup.log'), 'utf8')).toBe('done\n');
    expect(() => fs.writeFileSync(path.join(reader.rootfs, 'var/log/nope'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));

    await runtime.mount(db.id);
    expect(table(dir).length).toBe(6);

    for (const c of [reader, job, db]) await runtime.unmount(c.id);
    expect(table(dir)).toEqual([]);
    await runtime.unmount(db.id);
    expect(fs.readdirSync(path.join(dbRoot, 'var/lib/postgres'))).toEqual([]);
    expect(fs.readFileSync(path.join(vol('/var/lib/postgres'), 'PG_VERSION'), 'utf8')).toBe('16\n');
  });

  test('nested volumes: the child is mounted inside the parent volume and unmounted before it', async () => {
    const { dir, root, rootfs, runtime } = await world();
    const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/srv/cache', '/srv'] });
    await runtime.mount(c.id);
    const vol = (p: string) => path.join(root, 'volumes', c.volumes.find((v) => v.path === p)!.volumeId);
    expect(table(dir)).toEqual([
      ['rootfs/c/srv', vol('/srv'), 'rw'],
      ['rootfs/c/srv/cache', vol('/srv/cache'), 'rw'],
    ]);
    fs.writeFileSync(path.join(c.rootfs, 'srv/cache/item'), 'cached');
    expect(fs.readFileSync(path.join(vol('/srv/cache'), 'item'), 'utf8')).toBe('cached');
    await runtime.unmount(c.id);
    expect(table(dir)).toEqual([]);
  });

  test('a failing mount undoes the mounts the call made, and mountinfo is as before', async () => {
    const { dir, root, rootfs, runtime } = await world();
    const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/a', '/b', '/c'] });
    // After create, /c becomes a regular file in the rootfs: its mount must fail.
    fs.writeFileSync(path.join(c.rootfs, 'c'), 'not a directory');
    const before = await snapshotTree(root);
    const error = await expectCode(runtime.mount(c.id), 'ERR_MOUNT_POINT_NOT_DIRECTORY');
    expect(error.message).toContain('/c');
    expect(table(dir)).toEqual([]);
    expect((await runtime.get(c.id)).mounted).toBe(false);
    expect(withoutNamespaceRegistry(await snapshotTree(root))).toEqual(before);
  });

  test('remove with force unmounts first; with volumes it deletes only unshared volumes', async () => {
    const { dir, root, rootfs, runtime } = await world();
    const db = await runtime.create({ rootfs: rootfs('db'), volumes: ['/data', '/scratch'] });
    const job = await runtime.create({ rootfs: rootfs('job'), volumes: ['/scratch'], volumesFrom: [db.id] });
    await runtime.mount(db.id);
    await runtime.mount(job.id);
    await expectCode(runtime.remove(db.id), 'ERR_CONTAINER_MOUNTED');
    await runtime.remove(db.id, { force: true, volumes: true });
    expect(table(dir).map((t) => t[0])).toEqual(['rootfs/job/data', 'rootfs/job/scratch']);
    const data = job.volumes.find((v) => v.path === '/data')!.volumeId;
    expect(fs.readdirSync(path.join(root, 'volumes')).sort()).toEqual([data, job.volumes.find((v) => v.path === '/scratch')!.volumeId].sort());
    await runtime.remove(job.id, { force: true, volumes: true });
    expect(table(dir)).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'volumes'))).toEqual([]);
  });

  test('copy-up keeps ownership of files owned by other users', async () => {
    const { root, rootfs, runtime } = await world();
    const fsRoot = rootfs('pg');
    const data = path.join(fsRoot, 'var/lib/postgres');
    fs.mkdirSync(data, { recursive: true });
    fs.writeFileSync(path.join(data, 'owned'), 'x');
    fs.chownSync(path.join(data, 'owned'), 999, 998);
    fs.chownSync(data, 999, 999);
    fs.chmodSync(data, 0o700);
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/var/lib/postgres'] });
    const volume = path.join(root, 'volumes', c.volumes[0]!.volumeId);
    expect(await snapshotTree(volume)).toEqual(await snapshotTree(data));
    const stat = fs.statSync(volume);
    expect([stat.uid, stat.gid, (stat.mode & 0o777).toString(8)]).toEqual([999, 999, '700']);
    // Mounted, the container sees the volume with the owner and mode the image had there.
    await runtime.mount(c.id);
    expect(fs.statSync(data).uid).toBe(999);
    expect(fs.readFileSync(path.join(data, 'owned'), 'utf8')).toBe('x');
    await runtime.unmount(c.id);
  });

  test('a state root reached through a bind mount: mounting twice stacks nothing and unmount leaves nothing', async () => {
    const { dir, rootfs } = await world();
    const disk = path.join(dir, 'disk');
    const state = path.join(dir, 'state-view');
    fs.mkdirSync(path.join(disk, 'sub'), { recursive: true });
    fs.mkdirSync(state);
    execFileSync('mount', ['--bind', path.join(disk, 'sub'), state]);
    try {
      const runtime = new ContainerRuntime({ root: state, mounter: new BindMounter() });
      const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/data', '/logs'] });
      await runtime.mount(c.id);
      await runtime.mount(c.id);
      expect(table(c.rootfs).map((t) => t[0])).toEqual(['data', 'logs']);
      await runtime.unmount(c.id);
      expect(table(c.rootfs)).toEqual([]);
      await runtime.remove(c.id, { volumes: true });
      expect(fs.readdirSync(path.join(state, 'volumes'))).toEqual([]);
    } finally {
      execFileSync('umount', ['-l', state]);
    }
  });

  test('a second path to the store (an ancestor bound elsewhere) does not make mounts stack', async () => {
    const { dir, root, rootfs, runtime } = await world();
    const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/data'] });
    const view = path.join(dir, 'backup-view');
    fs.mkdirSync(view);
    execFileSync('mount', ['--bind', path.dirname(root), view]);
    try {
      await runtime.mount(c.id);
      await runtime.mount(c.id);
      expect(table(c.rootfs).map((t) => t[0])).toEqual(['data']);
      await runtime.unmount(c.id);
      expect(table(c.rootfs)).toEqual([]);
    } finally {
      execFileSync('umount', ['-l', view]);
    }
  });

  test('a foreign mount already at a volume path is not taken for ours, and unmount leaves it in place', async () => {
    const { root, rootfs, runtime } = await world();
    const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/data'] });
    const at = path.join(c.rootfs, 'data');
    fs.mkdirSync(at);
    execFileSync('mount', ['-t', 'tmpfs', 'foreign', at]);
    fs.writeFileSync(path.join(at, 'foreign-file'), 'x');
    await runtime.mount(c.id);
    expect(fs.readdirSync(at)).toEqual([]);
    expect(table(c.rootfs).map((t) => t[1])).toEqual(['/', path.join(root, 'volumes', c.volumes[0]!.volumeId)]);
    await runtime.unmount(c.id);
    expect(fs.readdirSync(at)).toEqual(['foreign-file']);
    execFileSync('umount', [at]);
  });

  test('mount() of a mounted container replaces a half-made mount (bound, never remounted nosuid,nodev) instead of stacking on it', async () => {
    const { root, rootfs, runtime } = await world();
    const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/srv', '/srv/cache'] });
    await runtime.mount(c.id);
    const vol = (p: string) => path.join(root, 'volumes', c.volumes.find((v) => v.path === p)!.volumeId);
    // What a process killed between the bind and the remount leaves at /srv (lazily
    // detaching /srv takes /srv/cache with it).
    execFileSync('umount', ['-l', path.join(c.rootfs, 'srv')]);
    execFileSync('mount', ['--bind', vol('/srv'), path.join(c.rootfs, 'srv')]);
    expect(mountsUnder(c.rootfs).map((m) => m.options.includes('nosuid'))).toEqual([false]);

    await runtime.mount(c.id);

    expect(table(c.rootfs)).toEqual([
      ['srv', vol('/srv'), 'rw'],
      ['srv/cache', vol('/srv/cache'), 'rw'],
    ]);
    for (const m of mountsUnder(c.rootfs)) expect(m.options).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
    await runtime.unmount(c.id);
    expect(table(c.rootfs)).toEqual([]);
  });

  test('unmount() finds a mount whose parent directory was renamed inside the rootfs, and reports success only when it is gone', async () => {
    const { root, rootfs, runtime } = await world();
    const c = await runtime.create({ rootfs: rootfs('c'), volumes: ['/var/lib/db'] });
    await runtime.mount(c.id);
    // What a process in the container may do: rename a directory above the mount point, and put a symlink in its place.
    fs.renameSync(path.join(c.rootfs, 'var'), path.join(c.rootfs, 'var.old'));
    fs.symlinkSync('/', path.join(c.rootfs, 'var'));
    expect(table(c.rootfs)).toEqual([['var.old/lib/db', path.join(root, 'volumes', c.volumes[0]!.volumeId), 'rw']]);

    await runtime.unmount(c.id);

    expect(table(c.rootfs)).toEqual([]);
    expect((await runtime.get(c.id)).mounted).toBe(false);
  });

  test('the state root cannot be used as or inside a rootfs', async () => {
    const { root, runtime, rootfs, dir } = await world();
    rootfs('x');
    await runtime.list();
    await expectCode(runtime.create({ rootfs: path.join(root, 'volumes'), volumes: ['/a'] }), 'ERR_INVALID_ROOTFS');
    await expectCode(runtime.create({ rootfs: dir, volumes: ['/a'] }), 'ERR_INVALID_ROOTFS');
    await expectCode(runtime.create({ rootfs: '/', volumes: ['/a'] }), 'ERR_INVALID_ROOTFS');
    expect(execFileSync('ls', [path.join(root, 'containers')]).toString()).toBe('');
  });
});

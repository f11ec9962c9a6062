import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { ContainerVolumesError, FakeMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, sandbox, snapshotTree, withoutNamespaceRegistry } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

async function setup() {
  const mounter = new FakeMounter();
  const box = await sandbox(mounter);
  const rootfs = await box.rootfs('db');
  const db = await box.runtime.create({ rootfs, volumes: ['/srv/cache', '/srv', '/var/log'] });
  const source = (p: string) => path.join(box.root, 'volumes', db.volumes.find((v) => v.path === p)!.volumeId);
  mounter.clearCalls();
  return { ...box, mounter, db, fsRoot: rootfs, source };
}

const ops = (mounter: FakeMounter) => mounter.calls.filter((c) => c.op !== 'list').map((c) => `${c.op} ${'path' in c ? c.path : ''}`);

describe('mount', () => {
  test('mounts every volume, parents before children, with each mode, and records the container as mounted', async () => {
    const { runtime, mounter, db, fsRoot, source } = await setup();
    const info = await runtime.mount(db.id);
    expect(info.mounted).toBe(true);
    expect((await runtime.get(db.id)).mounted).toBe(true);
    expect(ops(mounter)).toEqual(['mount /srv', 'mount /srv/cache', 'mount /var/log']);
    expect(await mounter.list(fsRoot)).toEqual([
      { path: '/srv', mode: 'rw', source: source('/srv') },
      { path: '/srv/cache', mode: 'rw', source: source('/srv/cache') },
      { path: '/var/log', mode: 'rw', source: source('/var/log') },
    ]);
  });

  test('is idempotent: mounting a mounted container mounts nothing more', async () => {
    const { runtime, mounter, db } = await setup();
    await runtime.mount(db.id);
    mounter.clearCalls();
    await runtime.mount(db.id);
    expect(ops(mounter)).toEqual([]);
  });

  test('re-makes only the mounts that went missing', async () => {
    const { runtime, mounter, db, fsRoot } = await setup();
    await runtime.mount(db.id);
    await mounter.unmount({ rootfs: fsRoot, path: '/var/log' });
    mounter.clearCalls();
    await runtime.mount(db.id);
    expect(ops(mounter)).toEqual(['mount /var/log']);
  });

  test('shared read-only volumes are mounted read-only', async () => {
    const { runtime, mounter, db, rootfs } = await setup();
    const job = await runtime.create({ rootfs: await rootfs('job'), volumesFrom: [`${db.id}:ro`] });
    await runtime.mount(job.id);
    expect((await mounter.list(job.rootfs)).map((m) => m.mode)).toEqual(['ro', 'ro', 'ro']);
  });

  test('if one mount fails, those made by the call are undone, children first, and the error names the path', async () => {
    const { runtime, mounter, db, fsRoot, root } = await setup();
    mounter.failOn({ op: 'mount', path: '/srv/cache' });
    const before = await snapshotTree(root);
    const error = await expectCode(runtime.mount(db.id), 'ERR_MOUNT_FAILED');
    expect(error.message).toContain('/srv/cache');
    expect(ops(mounter)).toEqual(['mount /srv', 'mount /srv/cache', 'unmount /srv']);
    expect(await mounter.list(fsRoot)).toEqual([]);
    expect((await runtime.get(db.id)).mounted).toBe(false);
    const after = await snapshotTree(root);
    expect(Object.keys(after).filter((name) => name.startsWith('namespaces'))).toHaveLength(2);
    expect(withoutNamespaceRegistry(after)).toEqual(before);
  });

  test('a rollback keeps what was mounted before the call', async () => {
    const { runtime, mounter, db, fsRoot } = await setup();
    await runtime.mount(db.id);
    await mounter.unmount({ rootfs: fsRoot, path: '/srv/cache' });
    await mounter.unmount({ rootfs: fsRoot, path: '/var/log' });
    mounter.failOn({ op: 'mount', path: '/var/log' });
    mounter.clearCalls();
    await expectCode(runtime.mount(db.id), 'ERR_MOUNT_FAILED');
    expect(ops(mounter)).toEqual(['mount /srv/cache', 'mount /var/log', 'unmount /srv/cache']);
    expect((await mounter.list(fsRoot)).map((m) => m.path)).toEqual(['/srv']);
  });

  test('a rollback that itself fails keeps the mounted intent, so remove still refuses the container', async () => {
    const { runtime, mounter, db, fsRoot } = await setup();
    mounter.failOn({ op: 'mount', path: '/var/log' });
    mounter.failOn({ op: 'unmount', path: '/srv' });
    await expectCode(runtime.mount(db.id), 'ERR_MOUNT_FAILED');
    expect((await mounter.list(fsRoot)).map((m) => m.path)).toEqual(['/srv']);
    expect((await runtime.get(db.id)).mounted).toBe(true);
    await expectCode(runtime.remove(db.id, { volumes: true }), 'ERR_CONTAINER_MOUNTED');
    await runtime.unmount(db.id);
    expect(await mounter.list(fsRoot)).toEqual([]);
  });

  test("a custom mounter's plain Error is wrapped as ERR_MOUNT_FAILED naming the path", async () => {
    const { runtime, mounter, db } = await setup();
    mounter.failOn({ op: 'mount', path: '/var/log', error: new Error('agent unreachable') });
    const error = await expectCode(runtime.mount(db.id), 'ERR_MOUNT_FAILED');
    expect(error).toBeInstanceOf(ContainerVolumesError);
    expect(error.message).toMatch(/\/var\/log.*agent unreachable/);
  });

  test('a volume directory missing from the store is ERR_VOLUME_NOT_FOUND before anything is mounted', async () => {
    const { runtime, mounter, db, source } = await setup();
    await fs.rm(source('/var/log'), { recursive: true });
    await expectCode(runtime.mount(db.id), 'ERR_VOLUME_NOT_FOUND');
    expect(ops(mounter)).toEqual([]);
  });
});

describe('unmount', () => {
  test('unmounts children before parents and records the container as not mounted; idempotent', async () => {
    const { runtime, mounter, db, fsRoot } = await setup();
    await runtime.mount(db.id);
    mounter.clearCalls();
    const info = await runtime.unmount(db.id);
    expect(info.mounted).toBe(false);
    expect(ops(mounter)).toEqual(['unmount /var/log', 'unmount /srv/cache', 'unmount /srv']);
    expect(await mounter.list(fsRoot)).toEqual([]);
    mounter.clearCalls();
    await runtime.unmount(db.id);
    expect(ops(mounter)).toEqual([]);
  });

  test('if one unmount fails, the ones already unmounted are mounted again and the container stays mounted', async () => {
    const { runtime, mounter, db, fsRoot } = await setup();
    await runtime.mount(db.id);
    const before = await mounter.list(fsRoot);
    mounter.failOn({ op: 'unmount', path: '/srv' });
    mounter.clearCalls();
    const error = await expectCode(runtime.unmount(db.id), 'ERR_UNMOUNT_FAILED');
    expect(error.message).toContain('/srv');
    expect(ops(mounter)).toEqual(['unmount /var/log', 'unmount /srv/cache', 'unmount /srv', 'mount /srv/cache', 'mount /var/log']);
    expect(await mounter.list(fsRoot)).toEqual(before);
    expect((await runtime.get(db.id)).mounted).toBe(true);
  });
});

describe('remove', () => {
  test('a mounted container is refused unless force, which unmounts it first', async () => {
    const { runtime, mounter, db, fsRoot, root } = await setup();
    await runtime.mount(db.id);
    const before = await snapshotTree(root);
    const error = await expectCode(runtime.remove(db.id), 'ERR_CONTAINER_MOUNTED');
    expect(error.message).toContain(db.id);
    expect(await snapshotTree(root)).toEqual(before);
    await runtime.remove(db.id, { force: true });
    expect(await mounter.list(fsRoot)).toEqual([]);
    await expectCode(runtime.get(db.id), 'ERR_CONTAINER_NOT_FOUND');
    expect((await runtime.volumes.list()).length).toBe(3);
  });

  test('volumes: true deletes the volumes no other container references and keeps the rest (docker rm -v)', async () => {
    const { runtime, db, rootfs, root } = await setup();
    const other = await runtime.create({ rootfs: await rootfs('o'), volumes: ['/mine'] });
    const job = await runtime.create({ rootfs: await rootfs('job'), volumes: ['/tmp'], volumesFrom: [db.id, other.id] });
    await runtime.remove(db.id, { volumes: true });
    expect((await runtime.volumes.list()).length).toBe(5);
    await runtime.remove(job.id, { volumes: true });
    const left = await runtime.volumes.list();
    expect(left.map((v) => v.id)).toEqual([other.volumes[0]!.volumeId]);
    expect(await fs.readdir(path.join(root, 'volumes'))).toEqual([other.volumes[0]!.volumeId]);
    expect(await fs.readdir(path.join(root, 'trash'))).toEqual([]);
  });

  test('a volume with something mounted inside it is not deleted, and the container is kept', async () => {
    const { runtime, mounter, db, source, root } = await setup();
    const inner = source('/var/log');
    await mounter.mount({ source: '/elsewhere', rootfs: inner, path: '/sub', mode: 'rw' });
    const before = await snapshotTree(root);
    await expectCode(runtime.remove(db.id, { volumes: true }), 'ERR_VOLUME_BUSY');
    expect(await snapshotTree(root)).toEqual(before);
    expect((await runtime.get(db.id)).id).toBe(db.id);
  });
});

describe('the store lock', () => {
  test('a lock lost while mounting stops before the next mount and undoes the ones made', async () => {
    const fake = new FakeMounter();
    let root = '';
    let first = true;
    const stalling = {
      unmount: fake.unmount.bind(fake),
      list: fake.list.bind(fake),
      async mount(request: Parameters<FakeMounter['mount']>[0]) {
        await fake.mount(request);
        if (!first) return;
        first = false;
        await fs.rm(path.join(root, 'lock'), { recursive: true, force: true });
        await new Promise((resolve) => setTimeout(resolve, 2_500));
      },
    };
    const box = await sandbox(stalling);
    root = box.root;
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/a', '/b'] });
    await expectCode(box.runtime.mount(c.id), 'ERR_LOCK_FAILED');
    expect(fake.calls.filter((call) => call.op === 'mount').map((call) => 'path' in call && call.path)).toEqual(['/a']);
    expect(await fake.list(c.rootfs)).toEqual([]);
  }, 15_000);

  test('a lock lost while an operation runs stops it before its next change, with ERR_LOCK_FAILED', async () => {
    const fake = new FakeMounter();
    // A mounter that stalls while someone else takes the lock away (as a process that
    // thought us dead would), long enough for proper-lockfile to notice.
    let root = '';
    const stalling = {
      mount: fake.mount.bind(fake),
      list: fake.list.bind(fake),
      async unmount(target: Parameters<FakeMounter['unmount']>[0]) {
        await fs.rm(path.join(root, 'lock'), { recursive: true, force: true });
        await new Promise((resolve) => setTimeout(resolve, 2_500));
        return fake.unmount(target);
      },
    };
    const box = await sandbox(stalling);
    root = box.root;
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'] });
    await box.runtime.mount(c.id);
    const error = await expectCode(box.runtime.remove(c.id, { force: true }), 'ERR_LOCK_FAILED');
    expect(error.message).toContain('stopped before changing anything more');
    expect((await box.runtime.get(c.id)).mounted).toBe(true);
  }, 15_000);
});

describe('VolumeManager', () => {
  test('inspect tells host path, creation time and which containers use the volume at which path and mode', async () => {
    const { runtime, db, rootfs, root } = await setup();
    const job = await runtime.create({ rootfs: await rootfs('job'), volumesFrom: [`${db.id}:ro`] });
    const id = db.volumes.find((v) => v.path === '/var/log')!.volumeId;
    const info = await runtime.volumes.inspect(id);
    expect(info).toEqual({
      id,
      hostPath: path.join(root, 'volumes', id),
      createdAt: expect.any(String),
      usedBy: [
        { containerId: db.id, path: '/var/log', mode: 'rw' },
        { containerId: job.id, path: '/var/log', mode: 'ro' },
      ],
    });
    expect(Math.abs(Date.parse(info.createdAt) - Date.parse(db.createdAt))).toBeLessThan(60_000);
  });

  test('remove refuses a volume in use, stopped or not, listing the containers; deletes it once free', async () => {
    const { runtime, db, root } = await setup();
    const id = db.volumes[0]!.volumeId;
    const before = await snapshotTree(root);
    const error = await expectCode(runtime.volumes.remove(id), 'ERR_VOLUME_IN_USE');
    expect(error.message).toContain(db.id);
    expect(await snapshotTree(root)).toEqual(before);
    await runtime.remove(db.id);
    await runtime.volumes.remove(id);
    await expectCode(runtime.volumes.inspect(id), 'ERR_VOLUME_NOT_FOUND');
    await expectCode(runtime.volumes.remove(id), 'ERR_VOLUME_NOT_FOUND');
  });

  test('prune deletes exactly the volumes no container references and reports them', async () => {
    const { runtime, db, rootfs } = await setup();
    const keep = await runtime.create({ rootfs: await rootfs('k'), volumes: ['/keep'] });
    const job = await runtime.create({ rootfs: await rootfs('job'), volumesFrom: [db.id] });
    await runtime.remove(db.id);
    expect(await runtime.volumes.prune()).toEqual({ removed: [] });
    await runtime.remove(job.id);
    const { removed } = await runtime.volumes.prune();
    expect(removed.sort()).toEqual(db.volumes.map((v) => v.volumeId).sort());
    expect((await runtime.volumes.list()).map((v) => v.id)).toEqual([keep.volumes[0]!.volumeId]);
    expect(await runtime.volumes.prune()).toEqual({ removed: [] });
  });

  test('prune deletes the volumes of a create that a killed process left pending, keeps those a configuration names, and clears the record', async () => {
    const { runtime, db, root } = await setup();
    // What a process killed during createVolumes leaves: the record, then the directories.
    const lost = ['9b8e1a52-5f0e-4d3c-8a52-2f6a1c1d0e01', '9b8e1a52-5f0e-4d3c-8a52-2f6a1c1d0e02'];
    const named = db.volumes[0]!.volumeId;
    for (const id of lost) await fs.mkdir(path.join(root, 'volumes', id));
    await fs.writeFile(path.join(root, 'pending', `${db.id}.json`), JSON.stringify([...lost, named]));

    const { removed } = await runtime.volumes.prune();

    expect(removed.sort()).toEqual(lost);
    expect((await fs.readdir(path.join(root, 'volumes'))).sort()).toEqual(db.volumes.map((v) => v.volumeId).sort());
    expect(await fs.readdir(path.join(root, 'pending'))).toEqual([]);
    expect(await runtime.volumes.prune()).toEqual({ removed: [] });
  });

  test('prune keeps an unreferenced volume that has something mounted inside it', async () => {
    const { runtime, mounter, db, source } = await setup();
    await runtime.remove(db.id);
    await mounter.mount({ source: '/elsewhere', rootfs: source('/srv'), path: '/sub', mode: 'rw' });
    const { removed } = await runtime.volumes.prune();
    expect(removed.length).toBe(2);
    expect((await runtime.volumes.list()).map((v) => v.hostPath)).toEqual([source('/srv')]);
  });
});

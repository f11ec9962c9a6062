import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { ContainerRuntime, FakeMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, sandbox, snapshotTree } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

const paths = (c: { volumes: { path: string }[] }) => c.volumes.map((v) => v.path);

describe('create: volumes made with a container (seed §1)', () => {
  test('each path gets a new, empty volume under <root>/volumes/<uuid>, recorded in the configuration', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/var/lib/postgres', '/var/log'] });
    expect(db.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(db.mounted).toBe(false);
    expect(paths(db)).toEqual(['/var/log', '/var/lib/postgres']);
    expect(new Set(db.volumes.map((v) => v.volumeId)).size).toBe(2);
    for (const v of db.volumes) {
      expect(v).toMatchObject({ mode: 'rw', origin: 'created' });
      expect(await fs.readdir(path.join(root, 'volumes', v.volumeId))).toEqual([]);
    }
    const config = JSON.parse(await fs.readFile(path.join(root, 'containers', `${db.id}.json`), 'utf8'));
    expect(config).toEqual({ version: 1, ...db });
    expect(await runtime.get(db.id)).toEqual(db);
  });

  test('paths are cleaned and de-duplicated: /var/log/ and /var/log are one volume', async () => {
    const { runtime, rootfs } = await sandbox();
    const c = await runtime.create({ rootfs: await rootfs('c'), volumes: ['/var/log/', '/var/log', '//var//log'] });
    expect(paths(c)).toEqual(['/var/log']);
  });

  test('a container with no volumes is allowed', async () => {
    const { runtime, rootfs } = await sandbox();
    expect((await runtime.create({ rootfs: await rootfs('c') })).volumes).toEqual([]);
  });

  test('copy-up: a new volume starts as a copy of the rootfs content at its path, modes and symlinks kept', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const fsRoot = await rootfs('pg');
    const data = path.join(fsRoot, 'var/lib/postgres');
    await fs.mkdir(path.join(data, 'base'), { recursive: true });
    await fs.writeFile(path.join(data, 'PG_VERSION'), '16\n');
    await fs.writeFile(path.join(data, 'base/secret'), 'x', { mode: 0o600 });
    await fs.chmod(path.join(data, 'base/secret'), 0o600);
    await fs.symlink('base/secret', path.join(data, 'link'));
    await fs.chmod(data, 0o700);
    const pg = await runtime.create({ rootfs: fsRoot, volumes: ['/var/lib/postgres'] });
    const volume = path.join(root, 'volumes', pg.volumes[0]!.volumeId);
    const inVolume = await snapshotTree(volume);
    expect(inVolume).toEqual(await snapshotTree(data));
    expect(inVolume['link']).toMatch(/-> base\/secret$/);
    expect(((await fs.stat(volume)).mode & 0o777).toString(8)).toBe('700');
  });

  test('copyUp: false leaves the new volume empty', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const fsRoot = await rootfs('c');
    await fs.mkdir(path.join(fsRoot, 'data'));
    await fs.writeFile(path.join(fsRoot, 'data/f'), 'x');
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/data'], copyUp: false });
    expect(await fs.readdir(path.join(root, 'volumes', c.volumes[0]!.volumeId))).toEqual([]);
  });

  test('copy-up follows a symlink inside the rootfs only: an absolute link names a path in the rootfs, never on the host', async () => {
    const { runtime, root, rootfs, dir } = await sandbox();
    const secret = path.join(dir, 'host-secret');
    await fs.mkdir(secret);
    await fs.writeFile(path.join(secret, 'shadow'), 'host data');
    const fsRoot = await rootfs('evil');
    await fs.symlink(secret, path.join(fsRoot, 'data'));
    await fs.symlink('/', path.join(fsRoot, 'up'));
    await fs.mkdir(path.join(fsRoot, 'real'));
    await fs.writeFile(path.join(fsRoot, 'real/inside'), 'rootfs data');
    await fs.symlink('../../real', path.join(fsRoot, 'climb'));
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/data', `/up${secret}/x`, '/climb'] });
    const content = async (p: string) => fs.readdir(path.join(root, 'volumes', c.volumes.find((v) => v.path === p)!.volumeId));
    // `/data -> <secret>` means <rootfs><secret>, which does not exist: nothing is copied.
    expect(await content('/data')).toEqual([]);
    expect(await content(`/up${secret}/x`)).toEqual([]);
    // `..` above the rootfs stays at its root: `/climb -> ../../real` is <rootfs>/real.
    expect(await content('/climb')).toEqual(['inside']);
    expect(c.volumes.map((v) => v.path).sort()).toEqual(['/climb', '/data', `/up${secret}/x`].sort());
    await expect(fs.readdir(secret)).resolves.toEqual(['shadow']);
  });

  test('a path that is a regular file in the rootfs cannot take a volume, and nothing is created', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const fsRoot = await rootfs('c');
    await fs.writeFile(path.join(fsRoot, 'data'), 'a file');
    // A change (reads take no lock) makes the store's layout and its reference index, so the snapshot compares like with like.
    await runtime.volumes.prune();
    const before = await snapshotTree(root);
    await expectCode(runtime.create({ rootfs: fsRoot, volumes: ['/ok', '/data'] }), 'ERR_MOUNT_POINT_NOT_DIRECTORY');
    await expectCode(runtime.create({ rootfs: fsRoot, volumes: ['/data'], copyUp: false }), 'ERR_MOUNT_POINT_NOT_DIRECTORY');
    expect(await snapshotTree(root)).toEqual(before);
  });
});

describe('create with volumesFrom: sharing (seed §2)', () => {
  async function withDb() {
    const box = await sandbox();
    const db = await box.runtime.create({ rootfs: await box.rootfs('db'), volumes: ['/var/lib/postgres', '/var/log'] });
    return { ...box, db };
  }

  test('every volume of the source is shared at the same path, same volume id, origin naming the source', async () => {
    const { runtime, rootfs, db } = await withDb();
    const job = await runtime.create({ rootfs: await rootfs('job'), volumesFrom: [db.id] });
    expect(job.volumes).toEqual(db.volumes.map((v) => ({ ...v, origin: { from: db.id } })));
    expect((await runtime.volumes.list()).map((v) => v.usedBy.map((u) => u.containerId).sort())).toEqual([
      [db.id, job.id].sort(),
      [db.id, job.id].sort(),
    ]);
  });

  test(':ro makes every shared volume read-only; :rw cannot make a read-only one writable', async () => {
    const { runtime, rootfs, db } = await withDb();
    const reader = await runtime.create({ rootfs: await rootfs('r'), volumesFrom: [`${db.id}:ro`] });
    expect(reader.volumes.map((v) => v.mode)).toEqual(['ro', 'ro']);
    const again = await runtime.create({ rootfs: await rootfs('r2'), volumesFrom: [`${reader.id}:rw`] });
    expect(again.volumes.map((v) => v.mode)).toEqual(['ro', 'ro']);
    const plain = await runtime.create({ rootfs: await rootfs('r3'), volumesFrom: [reader.id] });
    expect(plain.volumes.map((v) => v.mode)).toEqual(['ro', 'ro']);
    const writer = await runtime.create({ rootfs: await rootfs('w'), volumesFrom: [`${db.id}:rw`] });
    expect(writer.volumes.map((v) => v.mode)).toEqual(['rw', 'rw']);
  });

  test('a later source wins a path over an earlier one', async () => {
    const { runtime, rootfs, db } = await withDb();
    const other = await runtime.create({ rootfs: await rootfs('other'), volumes: ['/var/log', '/cache'] });
    const c = await runtime.create({ rootfs: await rootfs('c'), volumesFrom: [db.id, `${other.id}:ro`] });
    const byPath = Object.fromEntries(c.volumes.map((v) => [v.path, v]));
    expect(byPath['/var/log']).toEqual({ path: '/var/log', volumeId: other.volumes.find((v) => v.path === '/var/log')!.volumeId, mode: 'ro', origin: { from: other.id } });
    expect(byPath['/var/lib/postgres']?.origin).toEqual({ from: db.id });
    expect(byPath['/cache']?.origin).toEqual({ from: other.id });
    const reversed = await runtime.create({ rootfs: await rootfs('d'), volumesFrom: [other.id, db.id] });
    expect(reversed.volumes.find((v) => v.path === '/var/log')?.volumeId).toBe(db.volumes.find((v) => v.path === '/var/log')!.volumeId);
  });

  test('an anonymous path that a shared volume covers is not created; others are', async () => {
    const { runtime, rootfs, db } = await withDb();
    const before = (await runtime.volumes.list()).length;
    const c = await runtime.create({ rootfs: await rootfs('c'), volumes: ['/var/log', '/tmp/scratch'], volumesFrom: [db.id] });
    expect(c.volumes.find((v) => v.path === '/var/log')?.origin).toEqual({ from: db.id });
    expect(c.volumes.find((v) => v.path === '/tmp/scratch')?.origin).toBe('created');
    expect((await runtime.volumes.list()).length).toBe(before + 1);
  });

  test('sharing is chained: a container sharing from a sharer gets the volumes it got from others', async () => {
    const { runtime, rootfs, db } = await withDb();
    const middle = await runtime.create({ rootfs: await rootfs('m'), volumes: ['/own'], volumesFrom: [db.id] });
    const last = await runtime.create({ rootfs: await rootfs('l'), volumesFrom: [middle.id] });
    expect(paths(last).sort()).toEqual(['/own', '/var/lib/postgres', '/var/log']);
    expect(last.volumes.every((v) => (v.origin as { from: string }).from === middle.id)).toBe(true);
  });

  test('shared volumes are never copied up', async () => {
    const { runtime, root, rootfs, db } = await withDb();
    const fsRoot = await rootfs('job');
    await fs.mkdir(path.join(fsRoot, 'var/log'), { recursive: true });
    await fs.writeFile(path.join(fsRoot, 'var/log/job.log'), 'must not be copied');
    const job = await runtime.create({ rootfs: fsRoot, volumesFrom: [db.id] });
    const log = job.volumes.find((v) => v.path === '/var/log')!;
    expect(await fs.readdir(path.join(root, 'volumes', log.volumeId))).toEqual([]);
  });

  test('the consumer keeps its own mapping: removing the source does not break it or delete its volumes', async () => {
    const { runtime, root, rootfs, db } = await withDb();
    const job = await runtime.create({ rootfs: await rootfs('job'), volumesFrom: [db.id] });
    await runtime.remove(db.id, { volumes: true });
    await expectCode(runtime.get(db.id), 'ERR_CONTAINER_NOT_FOUND');
    expect(await runtime.get(job.id)).toEqual(job);
    for (const v of job.volumes) await fs.access(path.join(root, 'volumes', v.volumeId));
    await runtime.mount(job.id);
  });

  test('an unknown source is ERR_CONTAINER_NOT_FOUND and nothing is created', async () => {
    const { runtime, root, rootfs, db } = await withDb();
    const fsRoot = await rootfs('c');
    const before = await snapshotTree(root);
    const error = await expectCode(
      runtime.create({ rootfs: fsRoot, volumes: ['/x'], volumesFrom: [db.id, '00000000-0000-4000-8000-000000000000'] }),
      'ERR_CONTAINER_NOT_FOUND',
    );
    expect(error.message).toContain('00000000-0000-4000-8000-000000000000');
    expect(await snapshotTree(root)).toEqual(before);
  });

  test("a source named by something that is not an id ('nonexistent') names no container, as Docker says: ERR_CONTAINER_NOT_FOUND", async () => {
    const { runtime, root, rootfs } = await withDb();
    const fsRoot = await rootfs('c');
    const before = await snapshotTree(root);
    for (const entry of ['nonexistent', 'nonexistent:ro', '../nonexistent']) {
      const error = await expectCode(runtime.create({ rootfs: fsRoot, volumesFrom: [entry] }), 'ERR_CONTAINER_NOT_FOUND');
      expect(error.message).toMatch(/no such container: ".*nonexistent" \(not a valid container id/);
    }
    await expectCode(runtime.get('nonexistent'), 'ERR_CONTAINER_NOT_FOUND');
    await expectCode(runtime.volumes.inspect('nonexistent'), 'ERR_VOLUME_NOT_FOUND');
    // A bad mode is still a bad mode, whatever it follows.
    await expectCode(runtime.create({ rootfs: fsRoot, volumesFrom: ['nonexistent:rx'] }), 'ERR_INVALID_MODE');
    expect(await snapshotTree(root)).toEqual(before);
  });
});

describe('createVolumes and shareVolumesFrom on an existing container', () => {
  test('createVolumes adds volumes and resolves to them; a path already there is ERR_DUPLICATE_MOUNT_POINT', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const c = await runtime.create({ rootfs: await rootfs('c'), volumes: ['/a'] });
    const added = await runtime.createVolumes(c.id, ['/b/', '/c']);
    expect(added.map((v) => [v.path, v.mode, v.origin])).toEqual([
      ['/b', 'rw', 'created'],
      ['/c', 'rw', 'created'],
    ]);
    expect(paths(await runtime.get(c.id))).toEqual(['/a', '/b', '/c']);
    const before = await snapshotTree(root);
    const error = await expectCode(runtime.createVolumes(c.id, ['/d', '/a/']), 'ERR_DUPLICATE_MOUNT_POINT');
    expect(error.message).toContain('/a');
    expect(await snapshotTree(root)).toEqual(before);
  });

  test('shareVolumesFrom is strict about paths the container already has', async () => {
    const { runtime, rootfs } = await sandbox();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/logs'] });
    const c = await runtime.create({ rootfs: await rootfs('c'), volumes: ['/own'] });
    const added = await runtime.shareVolumesFrom(c.id, db.id, { mode: 'ro' });
    expect(added.map((v) => [v.path, v.mode, v.origin])).toEqual([
      ['/data', 'ro', { from: db.id }],
      ['/logs', 'ro', { from: db.id }],
    ]);
    await expectCode(runtime.shareVolumesFrom(c.id, db.id), 'ERR_DUPLICATE_MOUNT_POINT');
    const d = await runtime.create({ rootfs: await rootfs('d'), volumes: ['/logs'] });
    await expectCode(runtime.shareVolumesFrom(d.id, db.id), 'ERR_DUPLICATE_MOUNT_POINT');
    expect(paths(await runtime.get(d.id))).toEqual(['/logs']);
    await expectCode(runtime.shareVolumesFrom(d.id, d.id), 'ERR_SHARE_FROM_SELF');
  });

  test('a mounted container cannot change its volumes', async () => {
    const { runtime, rootfs } = await sandbox();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data'] });
    const c = await runtime.create({ rootfs: await rootfs('c') });
    await runtime.mount(c.id);
    await expectCode(runtime.createVolumes(c.id, ['/x']), 'ERR_CONTAINER_MOUNTED');
    await expectCode(runtime.shareVolumesFrom(c.id, db.id), 'ERR_CONTAINER_MOUNTED');
    expect((await runtime.get(c.id)).volumes).toEqual([]);
  });
});

describe('persistence', () => {
  test('a new runtime on the same root sees the same containers and volumes', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data'] });
    const job = await runtime.create({ rootfs: await rootfs('job'), volumesFrom: [`${db.id}:ro`] });
    const reopened = new ContainerRuntime({ root, mounter: new FakeMounter() });
    expect(await reopened.list()).toEqual([db, job]);
    expect(await reopened.volumes.list()).toEqual(await runtime.volumes.list());
  });

  test('writes leave no temporary files behind', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const c = await runtime.create({ rootfs: await rootfs('c'), volumes: ['/data'] });
    await runtime.mount(c.id);
    await runtime.unmount(c.id);
    expect(await fs.readdir(path.join(root, 'containers'))).toEqual([`${c.id}.json`]);
    expect(await fs.readdir(path.join(root, 'trash'))).toEqual([]);
  });

  test('a root that cannot be created is ERR_STORE_UNAVAILABLE naming it, and works once the cause is gone', async () => {
    const { dir, rootfs } = await sandbox();
    const blocker = path.join(dir, 'blocker');
    await fs.writeFile(blocker, 'a file where the root should go');
    const runtime = new ContainerRuntime({ root: path.join(blocker, 'state'), mounter: new FakeMounter() });
    const error = await expectCode(runtime.list(), 'ERR_STORE_UNAVAILABLE');
    expect(error.message).toContain(blocker);
    await expectCode(runtime.create({ rootfs: await rootfs('c') }), 'ERR_STORE_UNAVAILABLE');
    await fs.rm(blocker);
    expect(await runtime.list()).toEqual([]);
  });

  test('files under the store that are not ours are ignored, never deleted', async () => {
    const { runtime, root, rootfs } = await sandbox();
    await runtime.create({ rootfs: await rootfs('c'), volumes: ['/data'] });
    await fs.mkdir(path.join(root, 'volumes', 'not-a-uuid'));
    await fs.writeFile(path.join(root, 'containers', 'notes.txt'), 'hello');
    expect((await runtime.list()).length).toBe(1);
    expect((await runtime.volumes.list()).length).toBe(1);
    await runtime.volumes.prune();
    await fs.access(path.join(root, 'volumes', 'not-a-uuid'));
  });
});

import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, NOTHING_RECOVERED as NOTHING, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { realWorld } from '../helpers/real-world.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Containers whose mounts meet: two on one rootfs with a volume at the same path, and a
 * rootfs inside another container's rootfs. Each container's mounts stay its own: a
 * mount that would land on another container's is refused, unmounting one container
 * never takes another's mounts, and recover() settles in one call.
 */


let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('shared-rootfs-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

const world = () => realWorld(base);

/** [mount point relative to `dir`, mounted directory, ro|rw], sorted by mount point. */
function table(dir: string): [string, string, string][] {
  return mountsUnder(dir)
    .map((m): [string, string, string] => [path.relative(dir, m.mountPoint), m.root, m.options.includes('ro') ? 'ro' : 'rw'])
    .sort((a, b) => a[0].localeCompare(b[0]));
}

function volumeOf(info: { volumes: { path: string; volumeId: string }[] }, at: string): string {
  const found = info.volumes.find((v) => v.path === at);
  if (!found) throw new Error(`no volume at ${at}`);
  return found.volumeId;
}

describe('two containers on one rootfs with a volume at the same path', () => {
  test("mounting the second over the first's live mount is refused, naming the first; nothing changes", async () => {
    const w = world();
    const rootfs = w.rootfs('shared');
    const a = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const b = await w.runtime.create({ rootfs, volumes: ['/data'] });
    await w.runtime.mount(a.id);
    const before = { files: await snapshotTree(w.dir), mounts: table(w.dir) };

    const error = await expectCode(w.runtime.mount(b.id), 'ERR_MOUNT_POINT_IN_USE');
    expect(error.message).toContain(a.id);
    expect(error.message).toContain('/data');
    expect(error.message).toContain(b.id);

    expect({ files: await snapshotTree(w.dir), mounts: table(w.dir) }).toEqual(before);
    expect((await w.runtime.get(b.id)).mounted).toBe(false);
    expect(table(rootfs)).toEqual([['data', w.volumeDir(volumeOf(a, '/data')), 'rw']]);

    // Once A is unmounted, B mounts; unmounting B leaves nothing.
    expect((await w.runtime.unmount(a.id)).mounted).toBe(false);
    expect(table(rootfs)).toEqual([]);
    await w.runtime.mount(b.id);
    expect(table(rootfs)).toEqual([['data', w.volumeDir(volumeOf(b, '/data')), 'rw']]);
    await w.runtime.unmount(b.id);
    expect(table(rootfs)).toEqual([]);
    expect(await w.restarted().recover()).toEqual(NOTHING);
  });

  test('a volume shared at the same path on the same rootfs, or one nested in the other container\'s, is refused too', async () => {
    const w = world();
    const rootfs = w.rootfs('shared');
    const a = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const sharer = await w.runtime.create({ rootfs, volumesFrom: [a.id] });
    const nested = await w.runtime.create({ rootfs, volumes: ['/data/inner'] });
    await w.runtime.mount(a.id);
    await expectCode(w.runtime.mount(sharer.id), 'ERR_MOUNT_POINT_IN_USE');
    await expectCode(w.runtime.mount(nested.id), 'ERR_MOUNT_POINT_IN_USE');
    // Nothing was made inside A's volume for the nested one.
    expect(fs.readdirSync(w.volumeDir(volumeOf(a, '/data')))).toEqual([]);
    expect(table(rootfs)).toEqual([['data', w.volumeDir(volumeOf(a, '/data')), 'rw']]);

    // And the other way round: with the nested one mounted, A is refused.
    await w.runtime.unmount(a.id);
    await w.runtime.mount(nested.id);
    await expectCode(w.runtime.mount(a.id), 'ERR_MOUNT_POINT_IN_USE');
    expect((await w.runtime.get(a.id)).mounted).toBe(false);
    expect(table(rootfs)).toEqual([['data/inner', w.volumeDir(volumeOf(nested, '/data/inner')), 'rw']]);
    expect(await w.restarted().recover()).toEqual(NOTHING);
  });

  test("unmount and remove --force of a container that is not mounted leave the mounts of the one that shares its volumes", async () => {
    const w = world();
    const rootfs = w.rootfs('shared');
    const source = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const user = await w.runtime.create({ rootfs, volumesFrom: [source.id] });
    await w.runtime.mount(user.id);
    const mounted = [['data', w.volumeDir(volumeOf(source, '/data')), 'rw']];
    expect(table(rootfs)).toEqual(mounted);

    // The same volume at the same path of the same rootfs: the user's mount, not the source's.
    await w.runtime.unmount(source.id);
    expect(table(rootfs)).toEqual(mounted);
    await w.runtime.remove(source.id, { force: true });
    expect(table(rootfs)).toEqual(mounted);
    expect((await w.runtime.get(user.id)).mounted).toBe(true);
    await w.runtime.unmount(user.id);
    expect(table(rootfs)).toEqual([]);
  });

  test('prune and volumes.remove never delete a volume that is still mounted somewhere, even with no container left', async () => {
    const w = world();
    const rootfs = w.rootfs('c');
    const a = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const volume = volumeOf(a, '/data');
    // A mount of the volume outside any configuration (left by hand, or by an older version).
    const elsewhere = path.join(w.dir, 'elsewhere');
    fs.mkdirSync(elsewhere);
    await new BindMounter().mount({ source: w.volumeDir(volume), rootfs: elsewhere, path: '/data', mode: 'rw' });
    await w.runtime.remove(a.id);

    expect(await w.runtime.volumes.prune()).toEqual({ removed: [] });
    expect(fs.existsSync(w.volumeDir(volume))).toBe(true);
    await expectCode(w.runtime.volumes.remove(volume), 'ERR_VOLUME_BUSY');
    expect(fs.existsSync(w.volumeDir(volume))).toBe(true);

    unmountAllUnder(elsewhere);
    expect(await w.runtime.volumes.prune()).toEqual({ removed: [volume] });
  });

  test('a mount whose volume was deleted under it (its source in the trash, or gone) is a stray to recover()', async () => {
    const w = world();
    const rootfs = w.rootfs('c');
    const a = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const b = await w.runtime.create({ rootfs, volumes: ['/logs'] });
    await w.runtime.mount(b.id);
    const volume = volumeOf(a, '/data');
    await new BindMounter().mount({ source: w.volumeDir(volume), rootfs, path: '/data', mode: 'rw' });
    // Deleted behind the library's back while mounted: the mount now shows a deleted source.
    fs.renameSync(w.volumeDir(volume), path.join(w.root, 'trash', `${volume}.1`));
    fs.rmSync(path.join(w.root, 'trash', `${volume}.1`), { recursive: true });
    expect(mountsUnder(path.join(rootfs, 'data'))).toHaveLength(1);
    await w.runtime.remove(a.id);

    const report = await w.restarted().recover();
    expect(report.unmounted).toContainEqual({ containerId: expect.any(String), path: '/data' });
    expect(report.failed).toEqual([]);
    expect(table(rootfs)).toEqual([['logs', w.volumeDir(volumeOf(b, '/logs')), 'rw']]);
    expect(await w.restarted().recover()).toEqual(NOTHING);
  });
});

describe("a rootfs inside another container's rootfs", () => {
  test("unmounting the outer container leaves the inner one's mounts, and recover() settles in one call", async () => {
    const w = world();
    const outer = await w.runtime.create({ rootfs: w.rootfs('outer'), volumes: ['/data'] });
    const innerRootfs = path.join(outer.rootfs, 'inner');
    fs.mkdirSync(innerRootfs);
    const inner = await w.runtime.create({ rootfs: innerRootfs, volumesFrom: [outer.id] });
    await w.runtime.mount(outer.id);
    await w.runtime.mount(inner.id);
    const data = w.volumeDir(volumeOf(outer, '/data'));
    const both = [
      ['data', data, 'rw'],
      ['inner/data', data, 'rw'],
    ];
    expect(table(outer.rootfs)).toEqual(both);

    expect(await w.restarted().recover()).toEqual(NOTHING);
    expect(table(outer.rootfs)).toEqual(both);

    await w.runtime.unmount(outer.id);
    expect(table(outer.rootfs)).toEqual([['inner/data', data, 'rw']]);
    expect((await w.runtime.get(inner.id)).mounted).toBe(true);
    expect(await w.restarted().recover()).toEqual(NOTHING);

    await w.runtime.mount(outer.id);
    await w.runtime.unmount(inner.id);
    expect(table(outer.rootfs)).toEqual([['data', data, 'rw']]);
    expect(await w.restarted().recover()).toEqual(NOTHING);
  });

  test('a stray under the inner rootfs is detached once, and the wanted mounts of both are made again in one call', async () => {
    const w = world();
    const outer = await w.runtime.create({ rootfs: w.rootfs('outer'), volumes: ['/data'] });
    const innerRootfs = path.join(outer.rootfs, 'inner');
    fs.mkdirSync(innerRootfs);
    const inner = await w.runtime.create({ rootfs: innerRootfs, volumesFrom: [`${outer.id}:ro`], volumes: ['/logs'] });
    await w.runtime.mount(outer.id);
    await w.runtime.mount(inner.id);
    const data = w.volumeDir(volumeOf(outer, '/data'));
    const logs = w.volumeDir(volumeOf(inner, '/logs'));
    const wanted = table(outer.rootfs);
    unmountAllUnder(outer.rootfs);
    await new BindMounter().mount({ source: logs, rootfs: innerRootfs, path: '/stray', mode: 'rw' });

    const report = await w.restarted().recover();
    expect(report.unmounted).toEqual([{ containerId: inner.id, path: '/stray' }]);
    expect([...report.remounted].sort((x, y) => x.path.localeCompare(y.path) || x.containerId.localeCompare(y.containerId))).toEqual(
      [
        { containerId: outer.id, path: '/data' },
        { containerId: inner.id, path: '/data' },
        { containerId: inner.id, path: '/logs' },
      ].sort((x, y) => x.path.localeCompare(y.path) || x.containerId.localeCompare(y.containerId)),
    );
    expect(table(outer.rootfs)).toEqual(wanted);
    expect(wanted).toEqual([
      ['data', data, 'rw'],
      ['inner/data', data, 'ro'],
      ['inner/logs', logs, 'rw'],
    ]);
    expect(await w.restarted().recover()).toEqual(NOTHING);
  });
});

import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { realWorld } from '../helpers/real-world.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Mounts that cannot be made or removed as asked: a directory above the rootfs that
 * stopped being one, and a mount point that would have to be made inside a volume the
 * container holds read-only. Each is a coded error that leaves the store and the
 * mounts as they were, and recover() repairs every other container.
 */

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('refusals-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

const world = () => realWorld(base);

function volumeOf(info: { volumes: { path: string; volumeId: string }[] }, at: string): string {
  const found = info.volumes.find((v) => v.path === at);
  if (!found) throw new Error(`no volume at ${at}`);
  return found.volumeId;
}

function table(dir: string): [string, string, string][] {
  return mountsUnder(dir).map((m): [string, string, string] => [path.relative(dir, m.mountPoint), m.root, m.options.includes('ro') ? 'ro' : 'rw']);
}

describe('a directory above the rootfs that is no longer a directory', () => {
  const breakings: [string, (dir: string) => void][] = [
    ['a file', (dir) => fs.writeFileSync(dir, 'not a directory')],
    ['a symlink loop', (dir) => fs.symlinkSync(path.basename(dir), dir)],
  ];
  test.each(breakings)('turned into %s: mount, unmount and remove({ force }) are coded errors that change nothing; recover() reports it and repairs the others', async (_, breakIt) => {
    const w = world();
    const idle = await w.runtime.create({ rootfs: w.rootfs('parent/idle'), volumes: ['/data'] });
    const busy = await w.runtime.create({ rootfs: w.rootfs('parent/busy'), volumes: ['/data'] });
    const healthy = await w.runtime.create({ rootfs: w.rootfs('other/healthy'), volumes: ['/data'] });
    await w.runtime.mount(busy.id);
    await w.runtime.mount(healthy.id);
    const parent = path.join(w.dir, 'rootfs', 'parent');
    fs.renameSync(parent, `${parent}.moved`);
    breakIt(parent);
    const before = { state: await snapshotTree(w.root), mounts: table(w.dir) };

    for (const error of [
      await expectCode(w.runtime.mount(idle.id), 'ERR_INVALID_ROOTFS'),
      await expectCode(w.runtime.unmount(busy.id), 'ERR_INVALID_ROOTFS'),
      await expectCode(w.runtime.remove(busy.id, { force: true }), 'ERR_INVALID_ROOTFS'),
    ]) {
      expect(error.message).toContain(parent);
    }
    expect({ state: await snapshotTree(w.root), mounts: table(w.dir) }).toEqual(before);
    expect((await w.runtime.get(idle.id)).mounted).toBe(false);
    expect((await w.runtime.get(busy.id)).mounted).toBe(true);

    // The healthy container lost its mount: recover() makes it again and reports the broken ones.
    unmountAllUnder(healthy.rootfs);
    const report = await w.restarted().recover();
    expect(report.remounted).toEqual([{ containerId: healthy.id, path: '/data' }]);
    expect(report.failed.map((f) => [f.containerId, f.code]).sort()).toEqual(
      [
        [idle.id, 'ERR_INVALID_ROOTFS'],
        [busy.id, 'ERR_INVALID_ROOTFS'],
      ].sort(),
    );
    expect(table(healthy.rootfs)).toEqual([['data', w.volumeDir(volumeOf(healthy, '/data')), 'rw']]);
  });
});

describe('nothing is created inside a volume the container holds read-only', () => {
  test('a volume of its own below a :ro share whose mount point is missing is refused at create and at share, naming both paths', async () => {
    const w = world();
    const a = await w.runtime.create({ rootfs: w.rootfs('a'), volumes: ['/data'] });
    const shared = w.volumeDir(volumeOf(a, '/data'));
    const before = await snapshotTree(w.dir);

    const error = await expectCode(w.runtime.create({ rootfs: w.rootfs('b'), volumesFrom: [`${a.id}:ro`], volumes: ['/data/x/y/z'] }), 'ERR_MOUNT_POINT_READ_ONLY');
    expect(error.message).toContain('/data/x/y/z');
    expect(error.message).toMatch(/read-only at \/data\b/);
    expect(await snapshotTree(w.dir)).toEqual({ ...before, 'rootfs/b': 'dir 755 0:0' });
    expect(await w.runtime.list()).toHaveLength(1);

    const c = await w.runtime.create({ rootfs: w.rootfs('c'), volumes: ['/data/x/y/z'] });
    await expectCode(w.runtime.shareVolumesFrom(c.id, a.id, { mode: 'ro' }), 'ERR_MOUNT_POINT_READ_ONLY');
    expect((await w.runtime.get(c.id)).volumes.map((v) => v.path)).toEqual(['/data/x/y/z']);
    expect(fs.readdirSync(shared)).toEqual([]);

    // Where the mount point is there, it is used as it is.
    fs.mkdirSync(path.join(shared, 'x/y/z'), { recursive: true });
    const b = await w.runtime.create({ rootfs: w.rootfs('b'), volumesFrom: [`${a.id}:ro`], volumes: ['/data/x/y/z'] });
    await w.runtime.mount(b.id);
    expect(table(b.rootfs)).toEqual([
      ['data', shared, 'ro'],
      ['data/x/y/z', w.volumeDir(volumeOf(b, '/data/x/y/z')), 'rw'],
    ]);
    await w.runtime.unmount(b.id);

    // Gone again by the time of the mount: refused, nothing created, nothing left mounted.
    fs.rmSync(path.join(shared, 'x'), { recursive: true });
    const mountError = await expectCode(w.runtime.mount(b.id), 'ERR_MOUNT_POINT_READ_ONLY');
    expect(mountError.message).toContain('/data/x/y/z');
    expect(mountError.message).toMatch(/read-only at \/data\b/);
    expect(fs.readdirSync(shared)).toEqual([]);
    expect(table(w.dir)).toEqual([]);
    expect((await w.runtime.get(b.id)).mounted).toBe(false);
  });

  test("a :ro share of a container with nested volumes: the mount point is part of the source's layout, so it is made", async () => {
    const w = world();
    const db = await w.runtime.create({ rootfs: w.rootfs('db'), volumes: ['/data', '/data/nested'] });
    const reader = await w.runtime.create({ rootfs: w.rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    const data = w.volumeDir(volumeOf(db, '/data'));

    await w.runtime.mount(reader.id);
    expect(fs.readdirSync(data)).toEqual(['nested']);
    expect(table(reader.rootfs)).toEqual([
      ['data', data, 'ro'],
      ['data/nested', w.volumeDir(volumeOf(db, '/data/nested')), 'ro'],
    ]);
  });
});

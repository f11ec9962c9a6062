import fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { FakeMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, NOTHING_RECOVERED as NOTHING, sandbox, snapshotTree } from '../helpers/fixtures.js';

/* Mounts that meet another container's, read-only parents, and the boot a mount is recorded in, with the fake mounter. */

afterAll(cleanupTemp);


describe("a mount that would meet another container's", () => {
  test('two containers on one rootfs with a volume at one path: the second is refused while the first is mounted', async () => {
    const mounter = new FakeMounter();
    const { runtime, rootfs, root } = await sandbox(mounter);
    const dir = await rootfs('shared');
    const a = await runtime.create({ rootfs: dir, volumes: ['/data'] });
    const b = await runtime.create({ rootfs: dir, volumes: ['/data/sub', '/logs'] });
    await runtime.mount(a.id);
    const before = { state: await snapshotTree(root), mounts: await mounter.list(dir) };
    const error = await expectCode(runtime.mount(b.id), 'ERR_MOUNT_POINT_IN_USE');
    expect(error.message).toContain(a.id);
    expect({ state: await snapshotTree(root), mounts: await mounter.list(dir) }).toEqual(before);
    // Mounting A again is still idempotent: its own mounts are not taken for another's.
    await runtime.mount(a.id);
    await runtime.unmount(a.id);
    expect((await runtime.mount(b.id)).mounted).toBe(true);
    await expectCode(runtime.mount(a.id), 'ERR_MOUNT_POINT_IN_USE');
    expect((await runtime.get(a.id)).mounted).toBe(false);
  });

  test('recover() with two containers meant to be mounted at one path (a state mount now refuses): the one in place stays, the other is reported', async () => {
    const mounter = new FakeMounter();
    const { runtime, rootfs, root } = await sandbox(mounter);
    const dir = await rootfs('shared');
    const older = await runtime.create({ rootfs: dir, volumes: ['/data'] });
    const newer = await runtime.create({ rootfs: dir, volumes: ['/data'] });
    await runtime.mount(newer.id);
    // Marked mounted behind the library's back, its mounts never made.
    const file = path.join(root, 'containers', `${older.id}.json`);
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), mounted: true }));

    const report = await runtime.recover();
    expect(report).toEqual({ ...NOTHING, failed: [{ containerId: older.id, code: 'ERR_MOUNT_POINT_IN_USE', message: expect.stringContaining(newer.id) }] });
    expect((await mounter.list(dir)).map((m) => m.source)).toEqual([path.join(root, 'volumes', newer.volumes[0]!.volumeId)]);
    expect(await runtime.recover()).toEqual(report);
  });
});

describe('a volume below one held read-only', () => {
  test('is refused at create and createVolumes when its mount point is missing from the read-only volume; nothing is made', async () => {
    const { runtime, rootfs, root } = await sandbox();
    const a = await runtime.create({ rootfs: await rootfs('a'), volumes: ['/data'] });
    const before = await snapshotTree(root);
    await expectCode(runtime.create({ rootfs: await rootfs('b'), volumesFrom: [`${a.id}:ro`], volumes: ['/data/x/y/z'] }), 'ERR_MOUNT_POINT_READ_ONLY');
    const b = await runtime.create({ rootfs: await rootfs('b'), volumesFrom: [`${a.id}:ro`] });
    await expectCode(runtime.createVolumes(b.id, ['/data/x']), 'ERR_MOUNT_POINT_READ_ONLY');
    expect((await runtime.get(b.id)).volumes.map((v) => v.path)).toEqual(['/data']);
    expect((await runtime.volumes.list()).map((v) => v.id)).toEqual([a.volumes[0]!.volumeId]);
    expect(Object.keys(await snapshotTree(root)).filter((p) => p.startsWith('volumes'))).toEqual(Object.keys(before).filter((p) => p.startsWith('volumes')));
    // Read-write, the same is allowed: the mount point is made in a volume the container may write.
    const c = await runtime.create({ rootfs: await rootfs('c'), volumesFrom: [a.id], volumes: ['/data/x/y/z'] });
    expect(c.volumes.map((v) => v.path)).toEqual(['/data', '/data/x/y/z']);
  });
});

describe('the boot a mount is recorded in', () => {
  test('mount() of a container marked mounted in an earlier boot records this boot, so recover() does not take it for rebooted', async () => {
    const { runtime, rootfs, root } = await sandbox();
    const c = await runtime.create({ rootfs: await rootfs('c'), volumes: ['/data'] });
    await runtime.mount(c.id);
    const file = path.join(root, 'containers', `${c.id}.json`);
    const current = (JSON.parse(fs.readFileSync(file, 'utf8')) as { mountedInBoot: string }).mountedInBoot;
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), mountedInBoot: randomUUID() }));

    expect((await runtime.mount(c.id)).mounted).toBe(true);
    expect((JSON.parse(fs.readFileSync(file, 'utf8')) as { mountedInBoot: string }).mountedInBoot).toBe(current);
    expect(await runtime.recover()).toEqual(NOTHING);
    expect((await runtime.get(c.id)).mounted).toBe(true);
  });
});

import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { ContainerRuntime, FakeMounter } from '../../src/index.js';
import { cleanupTemp, sandbox } from '../helpers/fixtures.js';

/*
 * Damage to the store that a user, a container or the host can cause, and that must
 * never break the store for good: every call either works or fails with a code, and
 * the damage is repaired by the next call or by recover().
 */

afterAll(cleanupTemp);

/**
 * Makes `dir/a…a/a…a/…/leaf` deeper than PATH_MAX (4,096 bytes), as any process in a
 * container can: one relative mkdir and chdir at a time, in a child process.
 */
function makeDeepTree(dir: string): void {
  const script = `
    const fs = require('node:fs');
    process.chdir(process.argv[1]);
    for (let i = 0; i < 24; i++) { fs.mkdirSync('a'.repeat(250)); process.chdir('a'.repeat(250)); }
    fs.writeFileSync('leaf', 'deep\\n');
  `;
  execFileSync(process.execPath, ['-e', script, dir]);
}

/** Removes what a failed test may have left: GNU rm walks by descriptors, fs.rm cannot. */
async function removeDeep(dir: string): Promise<void> {
  execFileSync('rm', ['-rf', '--one-file-system', '--', dir]);
}

describe('a path deeper than PATH_MAX inside a volume', () => {
  test('remove(id, { volumes: true }), volumes.remove, prune and recover() delete it and keep working', async () => {
    const box = await sandbox();
    try {
      const rootfs = await box.rootfs('app');
      const volumeDir = (info: { volumes: { volumeId: string }[] }) => path.join(box.root, 'volumes', info.volumes[0]!.volumeId);

      // remove -v
      const a = await box.runtime.create({ rootfs, volumes: ['/data'] });
      makeDeepTree(volumeDir(a));
      await box.runtime.remove(a.id, { volumes: true });
      expect(existsSync(volumeDir(a))).toBe(false);
      expect(await fs.readdir(path.join(box.root, 'trash'))).toEqual([]);

      // prune of a volume kept after its container went
      const b = await box.runtime.create({ rootfs, volumes: ['/data'] });
      makeDeepTree(volumeDir(b));
      await box.runtime.remove(b.id);
      expect(await box.runtime.volumes.prune()).toEqual({ removed: [b.volumes[0]!.volumeId] });
      expect(existsSync(volumeDir(b))).toBe(false);

      // volumes.remove
      const c = await box.runtime.create({ rootfs, volumes: ['/data'] });
      makeDeepTree(volumeDir(c));
      await box.runtime.remove(c.id);
      await box.runtime.volumes.remove(c.volumes[0]!.volumeId);
      expect(existsSync(volumeDir(c))).toBe(false);

      // trash left by an interrupted delete: recover() empties it
      const trashed = path.join(box.root, 'trash', `${a.volumes[0]!.volumeId}.1`);
      await fs.mkdir(trashed);
      makeDeepTree(trashed);
      const report = await box.runtime.recover();
      expect(report.removedFiles).toEqual([`trash/${path.basename(trashed)}`]);
      expect(await fs.readdir(path.join(box.root, 'trash'))).toEqual([]);
      expect((await box.runtime.recover()).removedFiles).toEqual([]);
      expect(await box.runtime.list()).toEqual([]);
    } finally {
      await removeDeep(box.dir);
    }
  });
});

describe('a layout directory deleted under a live runtime', () => {
  test.each(['volumes', 'containers', 'pending', 'trash', 'index'])(
    '<root>/%s: every call works or fails with ERR_STORE_UNAVAILABLE, and the next one works',
    async (dir) => {
      const box = await sandbox();
      const rootfs = await box.rootfs('app');
      const kept = await box.runtime.create({ rootfs, volumes: ['/data'] });
      await fs.rm(path.join(box.root, dir), { recursive: true });

      const calls: [string, () => Promise<unknown>][] = [
        ['list', () => box.runtime.list()],
        ['volumes.list', () => box.runtime.volumes.list()],
        ['create', () => box.runtime.create({ rootfs, volumes: ['/data'] })],
        ['prune', () => box.runtime.volumes.prune()],
        ['recover', () => box.runtime.recover()],
      ];
      for (const [name, call] of calls) {
        const outcome = await call().then(
          () => 'ok',
          (error: { code?: string }) => error.code ?? `uncoded: ${String(error)}`,
        );
        expect({ name, outcome }).toEqual({ name, outcome: expect.stringMatching(/^(ok|ERR_STORE_UNAVAILABLE)$/) });
        // The next call works.
        await box.runtime.list();
      }
      for (const name of ['volumes', 'containers', 'pending', 'trash', 'index']) expect(existsSync(path.join(box.root, name))).toBe(true);
      const after = await box.runtime.create({ rootfs, volumes: ['/data'] });
      await box.runtime.mount(after.id);
      await box.runtime.unmount(after.id);
      await box.runtime.remove(after.id, { volumes: true });
      if (dir !== 'containers') expect((await box.runtime.list()).map((c) => c.id)).toContain(kept.id);
      if (dir === 'index') {
        // The rebuilt index still knows who uses a volume: it is not deleted as unused.
        await expect(box.runtime.volumes.remove(kept.volumes[0]!.volumeId)).rejects.toMatchObject({ code: 'ERR_VOLUME_IN_USE' });
      }
    },
  );

  test('recover() makes the layout again', async () => {
    const box = await sandbox();
    await box.runtime.list();
    await fs.rm(path.join(box.root, 'volumes'), { recursive: true });
    await fs.rm(path.join(box.root, 'containers'), { recursive: true });
    await box.runtime.recover();
    expect(existsSync(path.join(box.root, 'volumes'))).toBe(true);
    expect(existsSync(path.join(box.root, 'containers'))).toBe(true);
  });
});

describe('a configuration that cannot be read (0 bytes, as after a power loss)', () => {
  test('recover() reports it in failed and moves it aside; then list works, and prune deletes only the volumes no configuration names', async () => {
    const box = await sandbox();
    const rootfs = await box.rootfs('app');
    const source = await box.runtime.create({ rootfs, volumes: ['/shared'] });
    const broken = await box.runtime.create({ rootfs, volumes: ['/own'], volumesFrom: [source.id] });
    const own = broken.volumes.find((v) => v.path === '/own')!.volumeId;
    const shared = source.volumes[0]!.volumeId;
    const file = path.join(box.root, 'containers', `${broken.id}.json`);
    await fs.writeFile(file, '');
    // A create killed half-way: recover() would delete its volume, but not while a
    // configuration that might have named it is in doubt.
    const half = '0d7bd5e1-39a5-4a6b-8b1f-6d1c1b0a9e11';
    await fs.mkdir(path.join(box.root, 'volumes', half));
    await fs.writeFile(path.join(box.root, 'pending', `${broken.id}.json`), JSON.stringify([half]));

    await expect(box.runtime.list()).rejects.toMatchObject({ code: 'ERR_CORRUPT_CONFIG' });
    await expect(box.runtime.remove(broken.id, { force: true })).rejects.toMatchObject({ code: 'ERR_CORRUPT_CONFIG' });

    const report = await box.runtime.recover();
    expect(report.failed).toEqual([{ containerId: broken.id, code: 'ERR_CORRUPT_CONFIG', message: expect.stringContaining(file) }]);
    expect(report.removedVolumes).toEqual([]);
    const [moved, ...more] = await fs.readdir(path.join(box.root, 'corrupt'));
    expect(more).toEqual([]);
    expect(moved).toMatch(new RegExp(`^${broken.id}\\.json\\.\\d+$`));
    expect(report.failed[0]!.message).toContain(`corrupt/${moved}`);
    expect(await fs.readFile(path.join(box.root, 'corrupt', moved!), 'utf8')).toBe('');

    expect(await box.runtime.list()).toEqual([source]);
    await expect(box.runtime.get(broken.id)).rejects.toMatchObject({ code: 'ERR_CONTAINER_NOT_FOUND' });
    // The next recover() finishes the half-created volume.
    expect(await box.runtime.recover()).toMatchObject({ failed: [], removedVolumes: [half] });
    // The volume only the moved configuration named is a prune candidate; the shared one is not.
    expect(await box.runtime.volumes.prune()).toEqual({ removed: [own] });
    expect(existsSync(path.join(box.root, 'volumes', shared))).toBe(true);
    expect((await box.runtime.recover()).failed).toEqual([]);
  });
});

describe('a reference index of another boot, read before any change rebuilt it', () => {
  test('volumes.inspect reads the configurations instead, and tells every user', async () => {
    const box = await sandbox();
    const rootfs = await box.rootfs('app');
    const a = await box.runtime.create({ rootfs, volumes: ['/data'] });
    const b = await box.runtime.create({ rootfs, volumesFrom: [`${a.id}:ro`] });
    // As after a power loss: the index is stale and lacks b's use.
    await fs.writeFile(path.join(box.root, 'index', 'boot-id'), '00000000-0000-4000-8000-000000000000');
    await fs.rm(path.join(box.root, 'index', 'refs', a.volumes[0]!.volumeId, b.id));
    const fresh = new ContainerRuntime({ root: box.root, mounter: new FakeMounter() });
    expect((await fresh.volumes.inspect(a.volumes[0]!.volumeId)).usedBy).toEqual([
      { containerId: a.id, path: '/data', mode: 'rw' },
      { containerId: b.id, path: '/data', mode: 'ro' },
    ]);
  });
});

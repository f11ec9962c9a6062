import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { ContainerRuntime, FakeMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, tempDir } from '../helpers/fixtures.js';
import { unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * The store's files under conditions only root can make: a file system mounted inside
 * a volume being deleted, a state directory on a read-only file system.
 */

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('store-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

function world() {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(rootfs);
  return { dir, rootfs };
}

describe('deleting a volume never crosses into a file system mounted inside it', () => {
  test('what the mounter does not report is still spared: the trash stays until it is unmounted, then recover() empties it', async () => {
    const { dir, rootfs } = world();
    const root = path.join(dir, 'state');
    // The fake mounter does not see real mounts, so the check for mounts inside the volume passes.
    const runtime = new ContainerRuntime({ root, mounter: new FakeMounter() });
    const c = await runtime.create({ rootfs, volumes: ['/data'] });
    const volumeDir = path.join(root, 'volumes', c.volumes[0]!.volumeId);
    fs.mkdirSync(path.join(volumeDir, 'inner'));
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(volumeDir, 'inner')]);
    fs.writeFileSync(path.join(volumeDir, 'inner', 'precious'), 'keep me\n');
    fs.writeFileSync(path.join(volumeDir, 'own'), 'the volume\n');

    await runtime.remove(c.id, { volumes: true });

    expect(fs.existsSync(volumeDir)).toBe(false);
    const [trashed, ...more] = fs.readdirSync(path.join(root, 'trash'));
    expect(more).toEqual([]);
    expect(fs.readFileSync(path.join(root, 'trash', trashed!, 'inner', 'precious'), 'utf8')).toBe('keep me\n');
    expect(fs.existsSync(path.join(root, 'trash', trashed!, 'own'))).toBe(false);
    expect((await runtime.recover()).removedFiles).toEqual([]);
    expect(fs.readFileSync(path.join(root, 'trash', trashed!, 'inner', 'precious'), 'utf8')).toBe('keep me\n');

    execFileSync('umount', [path.join(root, 'trash', trashed!, 'inner')]);
    expect((await runtime.recover()).removedFiles).toEqual([`trash/${trashed}`]);
    expect(fs.readdirSync(path.join(root, 'trash'))).toEqual([]);
  });
});

describe('a state directory on a read-only file system', () => {
  test('reads are answered without the lock; every change is ERR_STORE_UNAVAILABLE naming the state directory', async () => {
    const { dir, rootfs } = world();
    const fsDir = path.join(dir, 'fs');
    fs.mkdirSync(fsDir);
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', fsDir]);
    const root = path.join(fsDir, 'state');
    const writer = new ContainerRuntime({ root, mounter: new FakeMounter() });
    const db = await writer.create({ rootfs, volumes: ['/data'] });
    const spare = await writer.create({ rootfs, volumes: ['/spare'] });
    await writer.remove(spare.id);
    execFileSync('mount', ['-o', 'remount,ro', fsDir]);

    // A runtime opened after the remount, and the one that opened the store before it.
    for (const runtime of [new ContainerRuntime({ root, mounter: new FakeMounter() }), writer]) {
      expect(await runtime.list()).toEqual([db]);
      expect(await runtime.get(db.id)).toEqual(db);
      expect((await runtime.volumes.list()).map((v) => v.id).sort()).toEqual([db.volumes[0]!.volumeId, spare.volumes[0]!.volumeId].sort());
      expect((await runtime.volumes.inspect(db.volumes[0]!.volumeId)).usedBy).toEqual([{ containerId: db.id, path: '/data', mode: 'rw' }]);
      const changes: [string, () => Promise<unknown>][] = [
        ['create', () => runtime.create({ rootfs, volumes: ['/x'] })],
        ['mount', () => runtime.mount(db.id)],
        ['remove', () => runtime.remove(db.id)],
        ['volumes.remove', () => runtime.volumes.remove(spare.volumes[0]!.volumeId)],
        ['prune', () => runtime.volumes.prune()],
        ['recover', () => runtime.recover()],
      ];
      for (const [name, change] of changes) {
        const error = await expectCode(change(), 'ERR_STORE_UNAVAILABLE');
        expect({ name, message: error.message }).toEqual({ name, message: expect.stringContaining(root) });
        expect(error.message).toContain('read-only');
      }
    }
    execFileSync('mount', ['-o', 'remount,rw', fsDir]);
    expect((await writer.volumes.prune()).removed).toEqual([spare.volumes[0]!.volumeId]);
  });
});

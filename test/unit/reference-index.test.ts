import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { ContainerRuntime, FakeMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, sandbox } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

/** A store with a db, an app sharing db's volumes, and a dangling volume left by a removed container. */
async function world() {
  const box = await sandbox();
  const db = await box.runtime.create({ rootfs: await box.rootfs('db'), volumes: ['/data', '/logs'] });
  const app = await box.runtime.create({ rootfs: await box.rootfs('app'), volumesFrom: [db.id] });
  const gone = await box.runtime.create({ rootfs: await box.rootfs('gone'), volumes: ['/tmp/x'] });
  await box.runtime.remove(gone.id);
  const dangling = gone.volumes[0]!.volumeId;
  const dataVolume = db.volumes[0]!.volumeId;
  return { ...box, db, app, dangling, dataVolume, index: path.join(box.root, 'index') };
}

describe('the reference index: derived from the configurations, never the truth', () => {
  test('a volume is refused while in use and its users are named, from the index plus each configuration', async () => {
    const w = await world();
    const error = await expectCode(w.runtime.volumes.remove(w.dataVolume), 'ERR_VOLUME_IN_USE');
    expect(error.message).toContain(w.db.id);
    expect(error.message).toContain(w.app.id);
    expect((await w.runtime.volumes.inspect(w.dataVolume)).usedBy.map((u) => u.containerId).sort()).toEqual([w.db.id, w.app.id].sort());
  });

  test('deleted from disk, it is rebuilt by the next process: nothing in use can then be deleted, and prune still finds the dangling volume', async () => {
    const w = await world();
    await fs.rm(w.index, { recursive: true });
    const next = new ContainerRuntime({ root: w.root, mounter: new FakeMounter() });
    await expectCode(next.volumes.remove(w.dataVolume), 'ERR_VOLUME_IN_USE');
    expect(await fs.readdir(path.join(w.index, 'refs', w.dataVolume))).toEqual([w.db.id, w.app.id].sort());
    expect(await next.volumes.prune()).toEqual({ removed: [w.dangling] });
    await next.remove(w.app.id);
    await next.remove(w.db.id, { volumes: true });
    expect(await fs.readdir(path.join(w.root, 'volumes'))).toEqual([]);
  });

  test('an index from another boot is rebuilt by the first change: a stale entry from before is gone', async () => {
    const w = await world();
    const stale = '00000000-0000-4000-8000-000000000000';
    await fs.writeFile(path.join(w.index, 'refs', w.dataVolume, stale), '');
    await fs.writeFile(path.join(w.index, 'boot-id'), '11111111-1111-4111-8111-111111111111');
    const next = new ContainerRuntime({ root: w.root, mounter: new FakeMounter() });
    await next.volumes.prune();
    expect(await fs.readdir(path.join(w.index, 'refs', w.dataVolume))).toEqual([w.db.id, w.app.id].sort());
  });

  test('recover() completes an index left short: a missing prune candidate and a missing use are added, nothing else is rewritten', async () => {
    const w = await world();
    // A kill between the configuration that dropped a volume and the index entry making
    // it a prune candidate; and a use lost from the index (only a hand edit does that).
    await fs.rm(path.join(w.index, 'unused', w.dangling));
    await fs.rm(path.join(w.index, 'refs', w.dataVolume, w.app.id));
    expect(await w.runtime.volumes.prune()).toEqual({ removed: [] });
    const untouched = path.join(w.index, 'refs', w.dataVolume, w.db.id);
    const before = (await fs.stat(untouched)).ino;

    await w.runtime.recover();

    expect((await fs.stat(untouched)).ino).toBe(before);
    expect(await fs.readdir(path.join(w.index, 'refs', w.dataVolume))).toEqual([w.db.id, w.app.id].sort());
    await w.runtime.remove(w.db.id);
    const error = await expectCode(w.runtime.volumes.remove(w.dataVolume), 'ERR_VOLUME_IN_USE');
    expect(error.message).toContain(w.app.id);
    expect(await w.runtime.volumes.prune()).toEqual({ removed: [w.dangling] });
  });

  test('a stale entry (a process killed between the configuration and the index) is confirmed against the configuration and dropped', async () => {
    const w = await world();
    const stale = '00000000-0000-4000-8000-000000000000';
    await fs.mkdir(path.join(w.index, 'refs', w.dangling));
    await fs.writeFile(path.join(w.index, 'refs', w.dangling, stale), '');
    expect((await w.runtime.volumes.inspect(w.dangling)).usedBy).toEqual([]);
    await w.runtime.volumes.remove(w.dangling);
    await expect(fs.access(path.join(w.index, 'refs', w.dangling))).rejects.toThrow();
    await expectCode(w.runtime.volumes.inspect(w.dangling), 'ERR_VOLUME_NOT_FOUND');
  });

  test('a corrupt configuration blocks only the volumes it may use, not unrelated ones', async () => {
    const w = await world();
    await fs.writeFile(path.join(w.root, 'containers', `${w.app.id}.json`), '{ not json');
    await expectCode(w.runtime.volumes.remove(w.dataVolume), 'ERR_CORRUPT_CONFIG');
    await w.runtime.volumes.remove(w.dangling);
    await expectCode(w.runtime.volumes.inspect(w.dangling), 'ERR_VOLUME_NOT_FOUND');
  });

  test('prune looks only at volumes whose last user went away, and forgets a candidate that is in use again', async () => {
    const w = await world();
    // A candidate marker for a volume that is in use must not get it deleted.
    await fs.writeFile(path.join(w.index, 'unused', w.dataVolume), '');
    expect(await w.runtime.volumes.prune()).toEqual({ removed: [w.dangling] });
    expect(await fs.readdir(path.join(w.index, 'unused'))).toEqual([]);
    expect((await w.runtime.volumes.inspect(w.dataVolume)).usedBy).toHaveLength(2);
  });
});

/**
 * Ids by prefix: every method that takes a container or volume id also takes any
 * unique beginning of it, as Docker does. A prefix beginning several ids is
 * ERR_AMBIGUOUS_ID naming them all, one beginning none is NOT_FOUND; neither changes anything.
 */
import { afterAll, describe, expect, test } from '@jest/globals';
import { type ContainerInfo, type ContainerRuntime, FakeMounter } from '../../src/index.js';
import { resolveReference } from '../../src/rules/ids.js';
import { cleanupTemp, expectCode, sandbox, snapshotTree } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

/** The shortest prefix of `id` that begins none of `others`. */
function shortestUnique(id: string, others: readonly string[]): string {
  for (let n = 1; n <= id.length; n++) {
    const prefix = id.slice(0, n);
    if (!others.some((o) => o !== id && o.startsWith(prefix))) return prefix;
  }
  return id;
}

/** Two of `ids` that share a beginning (17 ids always do: there are 16 hex digits), and that beginning. */
function sharedPrefix(ids: readonly string[]): { prefix: string; matching: string[] } {
  const sorted = [...ids].sort();
  for (let i = 1; i < sorted.length; i++) {
    const [a, b] = [sorted[i - 1] as string, sorted[i] as string];
    if (a[0] !== b[0]) continue;
    let n = 0;
    while (a[n] === b[n]) n++;
    const prefix = a.slice(0, n);
    return { prefix, matching: sorted.filter((id) => id.startsWith(prefix)) };
  }
  throw new Error('fixture: no two ids share a first digit');
}

async function world() {
  const box = await sandbox(new FakeMounter());
  const runtime = box.runtime as ContainerRuntime;
  const db = await runtime.create({ rootfs: await box.rootfs('db'), volumes: ['/var/lib/postgres', '/var/log'] });
  const app = await runtime.create({ rootfs: await box.rootfs('app') });
  const many: ContainerInfo[] = [];
  for (let i = 0; i < 17; i++) many.push(await runtime.create({ rootfs: await box.rootfs(`c${i}`) }));
  const containerIds = [db.id, app.id, ...many.map((c) => c.id)];
  return { box, runtime, db, app, containerIds };
}

describe('a unique prefix names the container or volume', () => {
  test('every method that takes a container id accepts its shortest unique prefix', async () => {
    const { box, runtime, db, app, containerIds } = await world();
    const short = (id: string) => shortestUnique(id, containerIds);

    expect((await runtime.get(short(db.id))).id).toBe(db.id);
    expect(await runtime.ociMounts(short(db.id))).toEqual(await runtime.ociMounts(db.id));
    expect(await runtime.lxcMountEntries(short(db.id))).toEqual(await runtime.lxcMountEntries(db.id));
    expect(await runtime.runHandler(short(db.id), ({ container }) => container.id)).not.toBe(db.id);

    const shared = await runtime.shareVolumesFrom(short(app.id), short(db.id), { mode: 'ro' });
    expect(shared.map((v) => v.origin)).toEqual([{ from: db.id }, { from: db.id }]);
    const [made] = await runtime.createVolumes(short(app.id), ['/cache']);
    expect((await runtime.get(app.id)).volumes.map((v) => v.volumeId)).toContain(made?.volumeId);

    expect((await runtime.mount(short(app.id))).mounted).toBe(true);
    expect((await runtime.unmount(short(app.id))).mounted).toBe(false);

    const reader = await runtime.create({ rootfs: await box.rootfs('reader'), volumesFrom: [`${short(db.id)}:ro`] });
    expect(reader.volumes.map((v) => [v.path, v.mode, v.origin]).sort()).toEqual([
      ['/var/lib/postgres', 'ro', { from: db.id }],
      ['/var/log', 'ro', { from: db.id }],
    ]);

    await runtime.remove(shortestUnique(reader.id, [...containerIds, reader.id]));
    await expectCode(runtime.get(reader.id), 'ERR_CONTAINER_NOT_FOUND');
  });

  test('every method that takes a volume id accepts its shortest unique prefix', async () => {
    const { runtime, db } = await world();
    const volumeIds = (await runtime.volumes.list()).map((v) => v.id);
    const pg = db.volumes[0]?.volumeId as string;
    expect((await runtime.volumes.inspect(shortestUnique(pg, volumeIds))).id).toBe(pg);
    expect((await runtime.volumes.diskUsage(shortestUnique(pg, volumeIds))).directories).toBe(1);
    await runtime.remove(db.id);
    await runtime.volumes.remove(shortestUnique(pg, volumeIds));
    await expectCode(runtime.volumes.inspect(pg), 'ERR_VOLUME_NOT_FOUND');
  });

  test('a one-digit prefix is enough when it is unique: there is no minimum length', async () => {
    const box = await sandbox(new FakeMounter());
    const only = await box.runtime.create({ rootfs: await box.rootfs('only') });
    expect((await box.runtime.get(only.id.slice(0, 1))).id).toBe(only.id);
  });
});

describe('a prefix that names several or none is refused, and nothing changes', () => {
  test('a prefix beginning several containers is ERR_AMBIGUOUS_ID naming each of them, for every method', async () => {
    const { box, runtime, app, containerIds } = await world();
    const { prefix, matching } = sharedPrefix(containerIds);
    const before = await snapshotTree(box.dir);
    const calls: [string, () => Promise<unknown>][] = [
      ['get', () => runtime.get(prefix)],
      ['remove', () => runtime.remove(prefix, { force: true, volumes: true })],
      ['mount', () => runtime.mount(prefix)],
      ['unmount', () => runtime.unmount(prefix)],
      ['createVolumes', () => runtime.createVolumes(prefix, ['/x'])],
      ['shareVolumesFrom (source)', () => runtime.shareVolumesFrom(app.id, prefix)],
      ['shareVolumesFrom (target)', () => runtime.shareVolumesFrom(prefix, app.id)],
      ['create volumesFrom', async () => runtime.create({ rootfs: await box.rootfs('app'), volumesFrom: [`${prefix}:ro`] })],
      ['ociMounts', () => runtime.ociMounts(prefix)],
      ['runHandler', () => runtime.runHandler(prefix, () => 'ran')],
    ];
    for (const [name, call] of calls) {
      const error = await expectCode(call(), 'ERR_AMBIGUOUS_ID');
      for (const id of matching) expect(`${name}: ${error.message}`).toContain(id);
      expect(error.message).toContain(JSON.stringify(prefix));
    }
    expect(await snapshotTree(box.dir)).toEqual(before);
    expect((box.mounter as FakeMounter).calls.filter((c) => c.op !== 'list')).toEqual([]);
  });

  test('a prefix beginning several volumes is ERR_AMBIGUOUS_ID for inspect, remove and diskUsage', async () => {
    const box = await sandbox(new FakeMounter());
    const many = await box.runtime.create({ rootfs: await box.rootfs('many'), volumes: Array.from({ length: 17 }, (_, i) => `/v${i}`) });
    await box.runtime.remove(many.id);
    const { prefix, matching } = sharedPrefix(many.volumes.map((v) => v.volumeId));
    const before = await snapshotTree(box.dir);
    for (const call of [() => box.runtime.volumes.inspect(prefix), () => box.runtime.volumes.remove(prefix), () => box.runtime.volumes.diskUsage(prefix)]) {
      const error = await expectCode(call(), 'ERR_AMBIGUOUS_ID');
      for (const id of matching) expect(error.message).toContain(id);
    }
    expect(await snapshotTree(box.dir)).toEqual(before);
  });

  test('a prefix beginning no id is NOT_FOUND, naming it', async () => {
    const { runtime, containerIds, db } = await world();
    const digits = '0123456789abcdef'.split('');
    const free = digits.find((d) => !containerIds.some((id) => id.startsWith(d))) ?? `${db.id.slice(0, 35)}${db.id.endsWith('0') ? '1' : '0'}`.slice(0, 30);
    const error = await expectCode(runtime.get(free), 'ERR_CONTAINER_NOT_FOUND');
    expect(error.message).toContain(JSON.stringify(free));
    // A volume's prefix names no container, and a container's no volume.
    const pg = db.volumes[0]?.volumeId as string;
    await expectCode(runtime.get(pg.slice(0, 30)), 'ERR_CONTAINER_NOT_FOUND');
    await expectCode(runtime.volumes.inspect(db.id.slice(0, 30)), 'ERR_VOLUME_NOT_FOUND');
  });
});

describe('resolveReference', () => {
  test('a full id is returned without listing the store', async () => {
    const id = '3f2a8c1e-9b2d-4c4e-8f00-0123456789ab';
    const list = async (): Promise<string[]> => {
      throw new Error('listed');
    };
    await expect(resolveReference(id, 'container', list)).resolves.toBe(id);
    await expect(resolveReference(id.slice(0, 8), 'container', list)).rejects.toThrow('listed');
  });

  test.each([[''], ['ABC'], ['../x'], ['g'], [' 3f'], ['3f\n'], ['0'.repeat(37)]])('%j cannot begin an id: NOT_FOUND without listing', async (value) => {
    const list = async (): Promise<string[]> => {
      throw new Error('listed');
    };
    await expect(resolveReference(value, 'volume', list)).rejects.toMatchObject({ code: 'ERR_VOLUME_NOT_FOUND' });
  });
});

import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { ociMounts } from '../../src/export/oci.js';
import { ContainerRuntime, FakeMounter, type IdMap, type Mounter, type MountRequest } from '../../src/index.js';
import { cleanupTemp, expectCode, sandbox, snapshotTree } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

const idmap: IdMap = {
  uidMappings: [
    { containerID: 0, hostID: 100000, size: 1000 },
    { containerID: 1000, hostID: 1000, size: 1 },
  ],
  gidMappings: [{ containerID: 0, hostID: 100000, size: 65536 }],
};

const range = (containerID: number, hostID: number, size: number) => ({ containerID, hostID, size });

describe('declaring a mapping', () => {
  test('create stores it, get and list report it as copies, and a reopened runtime reads it back', async () => {
    const box = await sandbox();
    const given = structuredClone(idmap);
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'], idmap: given });
    expect(c.idmap).toEqual(idmap);
    given.uidMappings[0]!.hostID = 5;
    c.idmap!.gidMappings.length = 0;
    expect((await box.runtime.get(c.id)).idmap).toEqual(idmap);
    const reopened = new ContainerRuntime({ root: box.root, mounter: new FakeMounter() });
    expect((await reopened.list()).map((x) => x.idmap)).toEqual([idmap]);
    const onDisk = JSON.parse(await fs.readFile(path.join(box.root, 'containers', `${c.id}.json`), 'utf8'));
    expect(onDisk.idmap).toEqual(idmap);
  });

  test('a container without one has no idmap field, and a configuration written before the field existed still reads', async () => {
    const box = await sandbox();
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'] });
    expect('idmap' in c).toBe(false);
    const file = path.join(box.root, 'containers', `${c.id}.json`);
    const onDisk = JSON.parse(await fs.readFile(file, 'utf8'));
    expect('idmap' in onDisk).toBe(false);
    expect((await box.runtime.get(c.id)).volumes).toHaveLength(1);
  });

  test('a bad idmap on disk makes the configuration corrupt, naming the field', async () => {
    const box = await sandbox();
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'], idmap });
    const file = path.join(box.root, 'containers', `${c.id}.json`);
    const onDisk = JSON.parse(await fs.readFile(file, 'utf8'));
    onDisk.idmap.uidMappings.push(range(500, 900000, 10));
    await fs.writeFile(file, JSON.stringify(onDisk));
    const error = await expectCode(box.runtime.get(c.id), 'ERR_CORRUPT_CONFIG');
    expect(error.message).toMatch(/idmap\.uidMappings has overlapping ranges: \[0\] and \[2\]/);
  });

  test('a share takes the volume, never the source container\'s mapping: each container mounts with its own', async () => {
    const box = await sandbox();
    const mounter = box.mounter as FakeMounter;
    const other: IdMap = { uidMappings: [range(0, 200000, 65536)], gidMappings: [range(0, 200000, 65536)] };
    const db = await box.runtime.create({ rootfs: await box.rootfs('db'), volumes: ['/data'], idmap });
    const plain = await box.runtime.create({ rootfs: await box.rootfs('plain'), volumesFrom: [db.id] });
    const reader = await box.runtime.create({ rootfs: await box.rootfs('reader'), volumesFrom: [`${db.id}:ro`], idmap: other });
    const late = await box.runtime.create({ rootfs: await box.rootfs('late') });
    await box.runtime.shareVolumesFrom(late.id, db.id);
    expect('idmap' in plain).toBe(false);
    expect('idmap' in (await box.runtime.get(late.id))).toBe(false);
    for (const c of [db, plain, reader, late]) await box.runtime.mount(c.id);
    const mounts = mounter.calls.filter((c) => c.op === 'mount');
    expect(mounts.map((m) => [m.rootfs.split('/').pop(), m.mode, m.op === 'mount' ? m.idmap : undefined])).toEqual([
      ['db', 'rw', idmap],
      ['plain', 'rw', undefined],
      ['reader', 'ro', other],
      ['late', 'rw', undefined],
    ]);
  });
});

describe('bad input on idmap is ERR_INVALID_ARGUMENT naming the field, and creates nothing', () => {
  const cases: [string, unknown, RegExp][] = [
    ['not an object', 'x', /^idmap must be an object/],
    ['an array', [], /^idmap must be an object/],
    ['null', null, /^idmap must be an object/],
    ['an unknown key', { ...idmap, projid: [] }, /^idmap has unknown key projid/],
    ['no gidMappings', { uidMappings: idmap.uidMappings }, /^idmap\.gidMappings must be an array/],
    ['empty uidMappings', { ...idmap, uidMappings: [] }, /^idmap\.uidMappings must hold 1 to 340 ranges/],
    ['341 ranges', { ...idmap, uidMappings: Array.from({ length: 341 }, (_, i) => range(i, 1000 + i, 1)) }, /must hold 1 to 340 ranges .* got 341/],
    ['a range that is not an object', { ...idmap, gidMappings: [7] }, /^idmap\.gidMappings\[0\] must be an object/],
    ['a range with an unknown key', { ...idmap, gidMappings: [{ ...range(0, 1, 1), hostId: 3 }] }, /^idmap\.gidMappings\[0\] has unknown key hostId/],
    ['a missing size', { ...idmap, uidMappings: [{ containerID: 0, hostID: 1 }] }, /^idmap\.uidMappings\[0\]\.size must be a whole number from 1/],
    ['size 0', { ...idmap, uidMappings: [range(0, 1, 0)] }, /^idmap\.uidMappings\[0\]\.size must be a whole number from 1/],
    ['a fraction', { ...idmap, uidMappings: [range(0.5, 1, 1)] }, /^idmap\.uidMappings\[0\]\.containerID must be a whole number from 0 to 4294967294, got 0\.5/],
    ['a negative id', { ...idmap, uidMappings: [range(0, -1, 1)] }, /^idmap\.uidMappings\[0\]\.hostID must be a whole number/],
    ['a string id', { ...idmap, uidMappings: [{ containerID: '0', hostID: 1, size: 1 }] }, /^idmap\.uidMappings\[0\]\.containerID must be a whole number .* got "0"/],
    ['(uid_t)-1', { ...idmap, uidMappings: [range(4294967295, 1, 1)] }, /containerID must be a whole number from 0 to 4294967294/],
    ['a range past the last id', { ...idmap, uidMappings: [range(0, 4294967290, 10)] }, /^idmap\.uidMappings\[0\] reaches past id 4294967294 \(hostID/],
    ['overlapping container ids', { ...idmap, uidMappings: [range(0, 100000, 10), range(9, 200000, 1)] }, /^idmap\.uidMappings has overlapping ranges: \[0\] and \[1\] share containerIDs 9\.\.9/],
    ['overlapping host ids', { ...idmap, gidMappings: [range(100, 5, 10), range(0, 0, 6)] }, /^idmap\.gidMappings has overlapping ranges: \[0\] and \[1\] share hostIDs 5\.\.5/],
  ];
  test.each(cases)('%s', async (_, bad, message) => {
    const box = await sandbox();
    const rootfs = await box.rootfs('c');
    const before = await snapshotTree(box.dir);
    const error = await expectCode(box.runtime.create({ rootfs, volumes: ['/data'], idmap: bad as IdMap }), 'ERR_INVALID_ARGUMENT');
    expect(error.message).toMatch(message);
    expect(await snapshotTree(box.dir)).toEqual(before);
  });

  test('the largest mapping the kernel takes is accepted: 340 ranges, up to id 4294967294', async () => {
    const box = await sandbox();
    const many = Array.from({ length: 340 }, (_, i) => range(i * 10, 4294967294 - 3400 + i * 10 + 1, 10));
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), idmap: { uidMappings: many, gidMappings: [range(0, 0, 4294967295)] } });
    expect(c.idmap?.uidMappings).toHaveLength(340);
  });

  test('a mount request with a bad idmap is refused by the mounter itself', async () => {
    const mounter = new FakeMounter();
    const request = { source: '/v', rootfs: '/r', path: '/data', mode: 'rw', idmap: { uidMappings: [], gidMappings: [] } } as MountRequest;
    const error = await expectCode(mounter.mount(request), 'ERR_INVALID_ARGUMENT');
    expect(error.message).toMatch(/^the idmap of the mount at \/data\.uidMappings must hold 1 to 340/);
    expect(mounter.calls).toEqual([]);
  });

  test('FakeMounter options are checked', () => {
    expect(() => new FakeMounter({ supportsIdmap: 'yes' as unknown as boolean })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => new FakeMounter({ idmap: true } as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(new FakeMounter().supportsIdmap).toBe(true);
  });
});

describe('a mounter that does not declare supportsIdmap', () => {
  /** A mounter written before idmaps existed: it would mount them plain, ignoring the field. */
  function oldMounter(): Mounter & { mounted: MountRequest[] } {
    const mounted: MountRequest[] = [];
    return {
      mounted,
      async mount(request) {
        mounted.push(request);
      },
      async unmount() {},
      async list() {
        return [];
      },
    };
  }

  test.each([
    ['a mounter without the property', () => oldMounter()],
    ['FakeMounter({ supportsIdmap: false })', () => new FakeMounter({ supportsIdmap: false })],
  ])('%s: mount of an idmapped container is ERR_IDMAP_UNSUPPORTED, nothing mounted, nothing written', async (_, make) => {
    const mounter = make();
    const box = await sandbox(mounter);
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/a', '/b'], idmap });
    const before = await snapshotTree(box.root);
    const error = await expectCode(box.runtime.mount(c.id), 'ERR_IDMAP_UNSUPPORTED');
    expect(error.message).toContain(`container ${c.id}`);
    expect(error.message).toMatch(/kernel mount engine/);
    expect(await snapshotTree(box.root)).toEqual(before);
    expect((await box.runtime.get(c.id)).mounted).toBe(false);
    if (mounter instanceof FakeMounter) expect(mounter.calls.filter((x) => x.op === 'mount')).toEqual([]);
    else expect((mounter as ReturnType<typeof oldMounter>).mounted).toEqual([]);
  });

  test('recover() reports a container meant to be mounted that it cannot mount idmapped, and mounts the others', async () => {
    const mounter = new FakeMounter({ supportsIdmap: false });
    const box = await sandbox(mounter);
    const mapped = await box.runtime.create({ rootfs: await box.rootfs('mapped'), volumes: ['/a'], idmap });
    const plain = await box.runtime.create({ rootfs: await box.rootfs('plain'), volumes: ['/a'] });
    await box.runtime.mount(plain.id);
    // Marked mounted by a process whose mounter could (the configuration says so), then recovered with one that cannot.
    const file = path.join(box.root, 'containers', `${mapped.id}.json`);
    const plainConfig = JSON.parse(await fs.readFile(path.join(box.root, 'containers', `${plain.id}.json`), 'utf8'));
    const config = JSON.parse(await fs.readFile(file, 'utf8'));
    await fs.writeFile(file, JSON.stringify({ ...config, mounted: true, mountedInBoot: plainConfig.mountedInBoot, mountedIn: plainConfig.mountedIn }));
    await box.runtime.unmount(plain.id);
    await box.runtime.mount(plain.id);
    mounter.clearCalls();
    const report = await box.runtime.recover();
    expect(report.failed).toEqual([expect.objectContaining({ code: 'ERR_IDMAP_UNSUPPORTED' })]);
    expect(mounter.calls.filter((x) => x.op === 'mount')).toEqual([]);
  });
});

describe('ociMounts of a container with a mapping', () => {
  test('each mount carries the mapping as uidMappings/gidMappings and the idmap option; without one, neither', () => {
    const base = { id: '00000000-0000-4000-8000-000000000000', rootfs: '/r', mounted: false, createdAt: '2024-01-01T00:00:00.000Z' };
    const volumes = [
      { path: '/srv/cache', volumeId: 'v2', mode: 'rw' as const, origin: 'created' as const },
      { path: '/srv', volumeId: 'v1', mode: 'ro' as const, origin: { from: '11111111-1111-4111-8111-111111111111' } },
    ];
    const mounts = ociMounts({ ...base, volumes, idmap }, (id) => `/store/${id}`);
    expect(mounts).toEqual([
      { destination: '/srv', type: 'bind', source: '/store/v1', options: ['bind', 'ro', 'nosuid', 'nodev', 'rprivate', 'idmap'], ...idmap },
      { destination: '/srv/cache', type: 'bind', source: '/store/v2', options: ['bind', 'rw', 'nosuid', 'nodev', 'rprivate', 'idmap'], ...idmap },
    ]);
    // Copies: changing one entry's mapping changes neither the other nor the input.
    mounts[0]!.uidMappings![0]!.hostID = 1;
    expect(mounts[1]!.uidMappings).toEqual(idmap.uidMappings);
    expect(idmap.uidMappings[0]!.hostID).toBe(100000);
    const plain = ociMounts({ ...base, volumes }, (id) => `/store/${id}`);
    expect(plain.every((m) => !('uidMappings' in m) && !('gidMappings' in m) && !m.options.includes('idmap'))).toBe(true);
  });
});

import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { lxcMountEntries } from '../../src/export/lxc.js';
import { ociMounts } from '../../src/export/oci.js';
import type { ContainerInfo, Mode, VolumeMount } from '../../src/index.js';
import fs from 'node:fs/promises';
import { placeMounts } from '../../src/plan/mount-plan.js';
import { cleanupTemp, expectCode, sandbox } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

const hostPathOf = (volumeId: string) => `/var/lib/cv/volumes/${volumeId}`;

function container(volumes: [path: string, volumeId: string, mode: Mode][]): ContainerInfo {
  return {
    id: '00000000-0000-4000-8000-000000000000',
    rootfs: '/srv/rootfs/c',
    volumes: volumes.map(([p, volumeId, mode]): VolumeMount => ({ path: p, volumeId, mode, origin: 'created' })),
    mounted: false,
    createdAt: '2024-01-01T00:00:00.000Z',
  };
}

/**
 * Reads an `lxc.mount.entry` line back the way LXC does: the config parser takes the
 * value after `=`, then glibc's getmntent_r splits it on blanks and decodes
 * \040 \011 \012 \134 (and nothing else).
 */
function parseLxcEntry(line: string): string[] {
  const match = /^lxc\.mount\.entry = (.*)$/.exec(line);
  if (!match) throw new Error(`not an lxc.mount.entry line: ${JSON.stringify(line)}`);
  const decode = (field: string) =>
    field.replace(/\\(040|011|012|134)/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  return (match[1] as string).split(/[ \t]+/).map(decode);
}

describe('ociMounts', () => {
  test('one bind entry per volume, parents before children whatever the configuration order, input untouched', () => {
    const c = container([
      ['/var/log/app', 'v3', 'rw'],
      ['/var/log', 'v2', 'rw'],
      ['/srv', 'v1', 'ro'],
      ['/a/b/c', 'v4', 'rw'],
    ]);
    const before = structuredClone(c);
    expect(ociMounts(c, hostPathOf)).toEqual([
      { destination: '/srv', type: 'bind', source: '/var/lib/cv/volumes/v1', options: ['bind', 'ro', 'nosuid', 'nodev', 'rprivate'] },
      { destination: '/var/log', type: 'bind', source: '/var/lib/cv/volumes/v2', options: ['bind', 'rw', 'nosuid', 'nodev', 'rprivate'] },
      { destination: '/a/b/c', type: 'bind', source: '/var/lib/cv/volumes/v4', options: ['bind', 'rw', 'nosuid', 'nodev', 'rprivate'] },
      { destination: '/var/log/app', type: 'bind', source: '/var/lib/cv/volumes/v3', options: ['bind', 'rw', 'nosuid', 'nodev', 'rprivate'] },
    ]);
    expect(c).toEqual(before);
  });

  test('modes come from the configuration: a :ro share is ro, the container\'s own volume rw, sources are the shared volumes', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const volumeDir = (volumeId: string) => path.join(root, 'volumes', volumeId);
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/data/nested', '/logs'] });
    const reader = await runtime.create({ rootfs: await rootfs('reader'), volumes: ['/scratch'], volumesFrom: [`${db.id}:ro`] });
    const writer = await runtime.create({ rootfs: await rootfs('writer'), volumesFrom: [db.id] });
    const dbVolume = (p: string) => volumeDir(db.volumes.find((v) => v.path === p)!.volumeId);

    const summary = (c: ContainerInfo) => ociMounts(c, volumeDir).map((m) => [m.destination, m.source, m.options[1]]);
    expect(summary(writer)).toEqual([
      ['/data', dbVolume('/data'), 'rw'],
      ['/logs', dbVolume('/logs'), 'rw'],
      ['/data/nested', dbVolume('/data/nested'), 'rw'],
    ]);
    const scratch = reader.volumes.find((v) => v.path === '/scratch')!;
    expect(summary(reader)).toEqual([
      ['/data', dbVolume('/data'), 'ro'],
      ['/logs', dbVolume('/logs'), 'ro'],
      ['/scratch', volumeDir(scratch.volumeId), 'rw'],
      ['/data/nested', dbVolume('/data/nested'), 'ro'],
    ]);
  });

  test('a container without volumes gives no mounts', () => {
    expect(ociMounts(container([]), hostPathOf)).toEqual([]);
  });
});

describe('lxcMountEntries', () => {
  test('one line per volume, parents first, destination relative to the rootfs, mode from the configuration', () => {
    const c = container([
      ['/data/nested', 'v2', 'ro'],
      ['/logs', 'v3', 'rw'],
      ['/data', 'v1', 'ro'],
    ]);
    expect(lxcMountEntries(placeMounts(c, hostPathOf), 'c')).toEqual([
      'lxc.mount.entry = /var/lib/cv/volumes/v1 data none bind,ro,nosuid,nodev 0 0',
      'lxc.mount.entry = /var/lib/cv/volumes/v3 logs none bind,rw,nosuid,nodev 0 0',
      'lxc.mount.entry = /var/lib/cv/volumes/v2 data/nested none bind,ro,nosuid,nodev 0 0',
    ]);
  });

  test('space, tab, newline and backslash are octal-escaped in both paths, so each line stays one six-field fstab entry', () => {
    const awkward = '/my data/tab\there/new\nline/back\\slash/\\040literal';
    const lines = lxcMountEntries(placeMounts(container([[awkward, 'v1', 'rw']]), (id) => `/srv/state dir/volumes/${id}`), 'c');
    expect(lines).toEqual([
      'lxc.mount.entry = /srv/state\\040dir/volumes/v1 my\\040data/tab\\011here/new\\012line/back\\134slash/\\134040literal none bind,rw,nosuid,nodev 0 0',
    ]);
    expect(lines[0]).not.toMatch(/[\t\n]/);
    expect(parseLxcEntry(lines[0] as string)).toEqual([
      '/srv/state dir/volumes/v1',
      awkward.slice(1),
      'none',
      'bind,rw,nosuid,nodev',
      '0',
      '0',
    ]);
  });

  test('modes of a real :ro share, read back through the parser', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const volumeDir = (volumeId: string) => path.join(root, 'volumes', volumeId);
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/data/nested'] });
    const reader = await runtime.create({ rootfs: await rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    expect(lxcMountEntries(placeMounts(reader, volumeDir), 'reader').map(parseLxcEntry)).toEqual(
      db.volumes.map((v) => [volumeDir(v.volumeId), v.path.slice(1), 'none', 'bind,ro,nosuid,nodev', '0', '0']),
    );
  });

  test('a container without volumes gives no lines', () => {
    expect(lxcMountEntries(placeMounts(container([]), hostPathOf), 'c')).toEqual([]);
  });
});

describe('runtime.lxcMountEntries makes the mount points, so LXC creates nothing', () => {
  test('top-level ones in the rootfs where the path lands, nested ones inside the parent volume, even for a :ro share', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const volumeDir = (volumeId: string) => path.join(root, 'volumes', volumeId);
    const image = await rootfs('db');
    await fs.mkdir(path.join(image, 'run'));
    await fs.mkdir(path.join(image, 'var'));
    await fs.symlink('../run', path.join(image, 'var/run'));
    const db = await runtime.create({ rootfs: image, volumes: ['/data', '/data/logs/app', '/var/run/app'], copyUp: false });
    const reader = await runtime.create({ rootfs: await rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    const [data, app] = [db.volumes[0]!, db.volumes[1]!];
    expect(await fs.readdir(volumeDir(data.volumeId))).toEqual([]);

    // The reader first: its /data is read-only inside, but the directory is made in the volume itself.
    const lines = await runtime.lxcMountEntries(reader.id);
    expect(lines.map(parseLxcEntry).map((f) => [f[1], f[3]])).toEqual([
      ['data', 'bind,ro,nosuid,nodev'],
      ['data/logs/app', 'bind,ro,nosuid,nodev'],
      ['var/run/app', 'bind,ro,nosuid,nodev'],
    ]);
    expect((await fs.stat(path.join(volumeDir(data.volumeId), 'logs/app'))).isDirectory()).toBe(true);
    expect((await fs.stat(path.join(reader.rootfs, 'data'))).isDirectory()).toBe(true);
    expect((await fs.stat(path.join(reader.rootfs, 'var/run/app'))).isDirectory()).toBe(true);
    expect(await fs.readdir(volumeDir(app.volumeId))).toEqual([]);

    // The owner: /var/run/app lands at /run/app, made there and written so.
    expect((await runtime.lxcMountEntries(db.id)).map(parseLxcEntry).map((f) => f[1])).toEqual(['data', 'run/app', 'data/logs/app']);
    expect((await fs.stat(path.join(image, 'run/app'))).isDirectory()).toBe(true);
  });

  test('a link a container left in its parent volume at a nested mount point is refused, nothing made through it', async () => {
    const { runtime, root, dir, rootfs } = await sandbox();
    const outside = path.join(dir, 'outside');
    await fs.mkdir(outside);
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/data/logs/app'], copyUp: false });
    const parent = path.join(root, 'volumes', db.volumes[0]!.volumeId);
    await fs.symlink(outside, path.join(parent, 'logs'));
    const before = await runtime.get(db.id);

    const error = await expectCode(runtime.lxcMountEntries(db.id), 'ERR_PATH_ESCAPES_ROOTFS');
    expect(error.message).toContain('/logs/app');
    expect(await fs.readdir(outside)).toEqual([]);
    expect(await fs.readlink(path.join(parent, 'logs'))).toBe(outside);
    expect(await runtime.get(db.id)).toEqual(before);
  });

  test('a mount point taken by a file is ERR_MOUNT_POINT_NOT_DIRECTORY, and the file is left as it was', async () => {
    const { runtime, rootfs } = await sandbox();
    const image = await rootfs('db');
    const db = await runtime.create({ rootfs: image, volumes: ['/data'], copyUp: false });
    await fs.rmdir(path.join(image, 'data')).catch(() => undefined);
    await fs.writeFile(path.join(image, 'data'), 'not a directory');
    await expectCode(runtime.lxcMountEntries(db.id), 'ERR_MOUNT_POINT_NOT_DIRECTORY');
    expect(await fs.readFile(path.join(image, 'data'), 'utf8')).toBe('not a directory');
  });
});

test('runtime.lxcMountEntries refuses a container with a user-namespace mapping, and makes no mount point for it', async () => {
  const { runtime, rootfs } = await sandbox();
  const image = await rootfs('db');
  const idmap = { uidMappings: [{ containerID: 0, hostID: 100000, size: 65536 }], gidMappings: [{ containerID: 0, hostID: 100000, size: 65536 }] };
  const db = await runtime.create({ rootfs: image, volumes: ['/data/x'], copyUp: false, idmap });
  await fs.rm(path.join(image, 'data'), { recursive: true, force: true });
  const error = await expectCode(runtime.lxcMountEntries(db.id), 'ERR_IDMAP_UNSUPPORTED');
  expect(error.message).toContain(db.id);
  expect(await fs.readdir(image)).toEqual([]);
});

import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { lxcMountEntries } from '../../src/export/lxc.js';
import { ociMounts } from '../../src/export/oci.js';
import type { ContainerInfo, Mode, VolumeMount } from '../../src/index.js';
import { cleanupTemp, sandbox } from '../helpers/fixtures.js';

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
    expect(lxcMountEntries(c, hostPathOf)).toEqual([
      'lxc.mount.entry = /var/lib/cv/volumes/v1 data none bind,create=dir,ro,nosuid,nodev 0 0',
      'lxc.mount.entry = /var/lib/cv/volumes/v3 logs none bind,create=dir,rw,nosuid,nodev 0 0',
      'lxc.mount.entry = /var/lib/cv/volumes/v2 data/nested none bind,create=dir,ro,nosuid,nodev 0 0',
    ]);
  });

  test('space, tab, newline and backslash are octal-escaped in both paths, so each line stays one six-field fstab entry', () => {
    const awkward = '/my data/tab\there/new\nline/back\\slash/\\040literal';
    const lines = lxcMountEntries(container([[awkward, 'v1', 'rw']]), (id) => `/srv/state dir/volumes/${id}`);
    expect(lines).toEqual([
      'lxc.mount.entry = /srv/state\\040dir/volumes/v1 my\\040data/tab\\011here/new\\012line/back\\134slash/\\134040literal none bind,create=dir,rw,nosuid,nodev 0 0',
    ]);
    expect(lines[0]).not.toMatch(/[\t\n]/);
    expect(parseLxcEntry(lines[0] as string)).toEqual([
      '/srv/state dir/volumes/v1',
      awkward.slice(1),
      'none',
      'bind,create=dir,rw,nosuid,nodev',
      '0',
      '0',
    ]);
  });

  test('modes of a real :ro share, read back through the parser', async () => {
    const { runtime, root, rootfs } = await sandbox();
    const volumeDir = (volumeId: string) => path.join(root, 'volumes', volumeId);
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/data/nested'] });
    const reader = await runtime.create({ rootfs: await rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    expect(lxcMountEntries(reader, volumeDir).map(parseLxcEntry)).toEqual(
      db.volumes.map((v) => [volumeDir(v.volumeId), v.path.slice(1), 'none', 'bind,create=dir,ro,nosuid,nodev', '0', '0']),
    );
  });

  test('a container without volumes gives no lines', () => {
    expect(lxcMountEntries(container([]), hostPathOf)).toEqual([]);
  });
});

import { describe, expect, test } from '@jest/globals';
import { normalizeVolumePath, normalizeVolumePaths } from '../../src/rules/volume-path.js';
import { parseVolumesFrom } from '../../src/rules/volumes-from.js';
import { parseMountinfo, bindSource } from '../../src/mounter/mountinfo.js';

const ID = '3f1c2a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60';

describe('volume path rules', () => {
  test.each([
    ['/var/log', '/var/log'],
    ['/var/log/', '/var/log'],
    ['/var//log', '/var/log'],
    ['//var/./log//', '/var/log'],
    ['/a b/c:d', '/a b/c:d'],
    [`/${'x'.repeat(255)}`, `/${'x'.repeat(255)}`],
  ])('%j is cleaned to %j', (given, clean) => {
    expect(normalizeVolumePath(given)).toBe(clean);
  });

  test.each([
    ['relative', 'must be absolute'],
    ['', 'must be absolute'],
    ['/', "must not be '/'"],
    ['///', "must not be '/'"],
    ['/a/../b', "'..'"],
    ['/..', "'..'"],
    ['/a/..', "'..'"],
    ['/a\0b', 'NUL'],
    [`/${'a/'.repeat(2048)}`, 'PATH_MAX'],
    [`/${'x'.repeat(256)}`, 'NAME_MAX'],
  ])('%j is refused (%s)', (given, rule) => {
    expect(() => normalizeVolumePath(given)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_VOLUME_PATH' }));
    expect(() => normalizeVolumePath(given)).toThrow(rule);
  });

  test.each([[42], [null], [undefined], [{}], [['/a']]])('a non-string (%j) is refused', (given) => {
    expect(() => normalizeVolumePath(given)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_VOLUME_PATH' }));
  });

  test('the same path given twice, in any spelling, is one volume', () => {
    expect(normalizeVolumePaths(['/var/log', '/var/log/', '/data', '//var/log'])).toEqual(['/var/log', '/data']);
  });
});

describe('--volumes-from entries', () => {
  test.each([
    [ID, undefined],
    [`${ID}:ro`, 'ro'],
    [`${ID}:rw`, 'rw'],
  ])('%s gives mode %s', (entry, mode) => {
    expect(parseVolumesFrom(entry)).toEqual({ containerId: ID, mode });
  });

  test.each([[`${ID}:`], [`${ID}:rx`], [`${ID}:RO`], [`${ID}:ro,z`], [`${ID}:ro:rw`]])('%s is ERR_INVALID_MODE', (entry) => {
    expect(() => parseVolumesFrom(entry)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_MODE' }));
  });

  test.each([['abc', undefined], ['abc:rw', 'rw'], [`${ID.slice(0, 9)}:ro`, 'ro']])('%j may begin an id: the caller resolves it', (entry, mode) => {
    expect(parseVolumesFrom(entry)).toEqual({ containerId: entry.split(':')[0], mode });
  });

  test.each([['xyz'], ['nonexistent'], [ID.toUpperCase()], ['../etc'], [`${ID}/x`], [':ro'], [''], ['xyz:rw'], [`${ID}0`]])(
    '%j names no container: ERR_CONTAINER_NOT_FOUND',
    (entry) => {
      expect(() => parseVolumesFrom(entry)).toThrow(expect.objectContaining({ code: 'ERR_CONTAINER_NOT_FOUND' }));
    },
  );

  test.each([['abc:rx'], ['../etc:'], [':RO']])('%j has a bad mode whatever precedes it: ERR_INVALID_MODE', (entry) => {
    expect(() => parseVolumesFrom(entry)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_MODE' }));
  });
});

describe('mountinfo', () => {
  const text = [
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '30 22 0:25 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw',
    '40 22 254:0 /srv/state/volumes/v1 /srv/rootfs/db/var/lib/my\\040db ro,nosuid,nodev - ext4 /dev/vda rw',
    '41 22 254:0 /srv/state/volumes/v1 /srv/rootfs/job/var/lib/my\\040db rw,nosuid,nodev - ext4 /dev/vda rw',
    '42 30 0:25 /state/volumes/v2 /srv/rootfs/db/cache rw - tmpfs tmpfs rw',
  ].join('\n');

  test('is parsed field by field, with octal escapes undone', () => {
    const [root, , db] = parseMountinfo(text);
    expect(root).toEqual({ id: 22, device: '254:0', root: '/', mountPoint: '/', options: ['rw', 'relatime'], propagation: ['shared:1'], fsType: 'ext4' });
    expect(db?.mountPoint).toBe('/srv/rootfs/db/var/lib/my db');
    expect(db?.options).toEqual(['ro', 'nosuid', 'nodev']);
    expect(db?.id).toBe(40);
    expect(db?.propagation).toEqual([]);
  });

  test("a bind mount's host source is found through the mount of its file system, never through another bind mount", () => {
    const all = parseMountinfo(text);
    expect(bindSource(all[2]!, all, '/srv/rootfs/db')).toBe('/srv/state/volumes/v1');
    expect(bindSource(all[3]!, all, '/srv/rootfs/job')).toBe('/srv/state/volumes/v1');
    expect(bindSource(all[4]!, all, '/srv/rootfs/db')).toBe('/tmp/state/volumes/v2');
  });
});

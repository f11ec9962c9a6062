import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { realWorld } from '../helpers/real-world.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Volume paths through symlinks of a real image's layout land where Docker, Podman and
 * runc put them: inside the rootfs, links followed there, absolute targets and `..`
 * clamped to its root. (Podman 4.3 given this very layout with `--rootfs` mounts the
 * four volumes at /run/postgresql, /usr/lib/app, /data/www and /etc/x.)
 */

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('rootfs-links-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** A host directory name that must never be created by the tests: the target of the rootfs's absolute link. */
const HOST_ONLY = `/cv-never-${randomUUID()}`;

/** A Debian / usr-merged layout: /var/run -> ../run, /lib -> usr/lib, an absolute link, and a link climbing above /. */
function debianRootfs(dir: string): string {
  for (const d of ['run', 'usr/lib', 'etc', 'var']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.symlinkSync('../run', path.join(dir, 'var/run'));
  fs.symlinkSync('usr/lib', path.join(dir, 'lib'));
  fs.symlinkSync(HOST_ONLY, path.join(dir, 'srv'));
  fs.symlinkSync('../../..', path.join(dir, 'up'));
  return dir;
}

const VOLUMES = ['/var/run/postgresql', '/lib/app', '/srv/www', '/up/etc/x'];
/** Where each lands, relative to the rootfs. */
const LANDS = ['run/postgresql', 'usr/lib/app', `${HOST_ONLY.slice(1)}/www`, 'etc/x'];

const engines = ['kernel', 'util-linux'] as const;

describe.each(engines)('a Debian-layout rootfs, %s engine', (engine) => {
  // Each engine by name, whichever the environment picks for the rest of the suite.
  const mounter = new BindMounter({ engine });

  function world() {
    const w = realWorld(base);
    return { ...w, runtime: new ContainerRuntime({ root: w.root, mounter }) };
  }

  test('volumes beneath its links are mounted where the links lead inside the rootfs, and written through the path given', async () => {
    const w = world();
    const rootfs = debianRootfs(w.rootfs('debian'));
    const db = await w.runtime.create({ rootfs, volumes: VOLUMES });
    expect(db.volumes.map((v) => v.path).sort()).toEqual([...VOLUMES].sort());
    await w.runtime.mount(db.id);
    const mounts = mountsUnder(rootfs);
    expect(mounts.map((m) => path.relative(rootfs, m.mountPoint)).sort()).toEqual([...LANDS].sort());
    for (const m of mounts) expect(m.options).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev']));
    for (const [i, at] of VOLUMES.entries()) {
      // Written through the path the container knows, found in the volume on the host.
      const inRootfs = path.join(rootfs, LANDS[i] as string);
      fs.writeFileSync(path.join(inRootfs, 'f'), at);
      const volume = db.volumes.find((v) => v.path === at)!.volumeId;
      expect(fs.readFileSync(path.join(w.volumeDir(volume), 'f'), 'utf8')).toBe(at);
    }
    expect(fs.existsSync(HOST_ONLY)).toBe(false);
    // Mounting again changes nothing; unmounting takes every mount away.
    await w.runtime.mount(db.id);
    expect(mountsUnder(rootfs)).toHaveLength(4);
    await w.runtime.unmount(db.id);
    expect(mountsUnder(rootfs)).toEqual([]);
    expect(fs.existsSync(HOST_ONLY)).toBe(false);
  });

  test('a :ro share through the links refuses writes, and the source keeps writing', async () => {
    const w = world();
    const rootfs = debianRootfs(w.rootfs('db'));
    const db = await w.runtime.create({ rootfs, volumes: VOLUMES });
    const readerRootfs = debianRootfs(w.rootfs('reader'));
    const reader = await w.runtime.create({ rootfs: readerRootfs, volumesFrom: [`${db.id}:ro`] });
    await w.runtime.mount(db.id);
    await w.runtime.mount(reader.id);
    fs.writeFileSync(path.join(rootfs, 'run/postgresql/pid'), '42');
    expect(fs.readFileSync(path.join(readerRootfs, 'run/postgresql/pid'), 'utf8')).toBe('42');
    for (const lands of LANDS) {
      expect(() => fs.writeFileSync(path.join(readerRootfs, lands, 'w'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    }
    const ro = mountsUnder(readerRootfs);
    expect(ro).toHaveLength(4);
    for (const m of ro) expect(m.options).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    await w.runtime.remove(reader.id, { force: true });
    await w.runtime.remove(db.id, { force: true });
    expect(mountsUnder(w.dir)).toEqual([]);
  });

  test('a dangling link on the way is followed: what it names is created inside the rootfs, not beside the link', async () => {
    const w = world();
    const rootfs = w.rootfs('dangling');
    fs.mkdirSync(path.join(rootfs, 'var'));
    fs.symlinkSync('../run', path.join(rootfs, 'var/run'));
    fs.symlinkSync('/srv/data', path.join(rootfs, 'data'));
    const c = await w.runtime.create({ rootfs, volumes: ['/var/run/postgresql', '/data/db'] });
    await w.runtime.mount(c.id);
    expect(mountsUnder(rootfs).map((m) => path.relative(rootfs, m.mountPoint)).sort()).toEqual(['run/postgresql', 'srv/data/db']);
    expect(fs.lstatSync(path.join(rootfs, 'var/run')).isSymbolicLink()).toBe(true);
    await w.runtime.unmount(c.id);
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('two paths that are one directory through a link are refused at mount too, and nothing is mounted', async () => {
    const w = world();
    const rootfs = w.rootfs('alias');
    fs.mkdirSync(path.join(rootfs, 'run'));
    const c = await w.runtime.create({ rootfs, volumes: ['/run/a', '/var/run/a'] });
    // Made a link only after create: the mount finds both paths are one directory.
    fs.mkdirSync(path.join(rootfs, 'var'));
    fs.symlinkSync('../run', path.join(rootfs, 'var/run'));
    const before = await snapshotTree(w.root);
    const error = await expectCode(w.runtime.mount(c.id), 'ERR_DUPLICATE_MOUNT_POINT');
    expect(error.message).toContain('/var/run/a');
    expect(mountsUnder(rootfs)).toEqual([]);
    expect(await snapshotTree(w.root)).toEqual(before);
  });

  test('a symlink loop is a coded error, and a link to the rootfs itself cannot take a volume', async () => {
    const w = world();
    const rootfs = w.rootfs('loops');
    const c = await w.runtime.create({ rootfs, volumes: ['/loop/x', '/self'] });
    fs.symlinkSync('loop', path.join(rootfs, 'loop'));
    await expectCode(w.runtime.mount(c.id), 'ERR_PATH_ESCAPES_ROOTFS');
    expect(mountsUnder(rootfs)).toEqual([]);
    fs.rmSync(path.join(rootfs, 'loop'));
    fs.symlinkSync('.', path.join(rootfs, 'self'));
    await expectCode(w.runtime.mount(c.id), 'ERR_INVALID_VOLUME_PATH');
    expect(mountsUnder(rootfs)).toEqual([]);
  });
});

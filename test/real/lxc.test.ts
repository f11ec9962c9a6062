import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { BindMounter, ContainerRuntime, type Mounter } from '../../src/index.js';
import { busyboxRootfs } from '../helpers/busybox-rootfs.js';
import { cleanupTemp, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace, requireCommand } from './guard.js';

// LXC, not the library, makes every volume mount here: each container is started with
// `lxc-execute` from a configuration holding `runtime.lxcMountEntries(id)`, and LXC
// mounts the volumes in the container's own mount namespace. The runtime's mounter
// only records calls, to show it is never asked to mount.

let base: string;
let lxcPath: string;
let runs = 0;

beforeAll(async () => {
  assertPrivateMountNamespace();
  await requireCommand('lxc-execute', ['--version'], 'apt-get install --no-install-recommends lxc');
  base = await tempDir('lxc-');
  lxcPath = path.join(base, 'lxc-path');
  await fs.mkdir(lxcPath);
});

afterAll(async () => {
  if (base) {
    unmountAllUnder(base);
    // LXC keeps a lock directory per container path under /run/lxc/lock; ours is ours to remove.
    await removeLockDirectory(lxcPath);
  }
  await cleanupTemp();
});

async function removeLockDirectory(containerPath: string): Promise<void> {
  const locks = '/run/lxc/lock';
  await fs.rm(path.join(locks, containerPath), { recursive: true, force: true });
  for (let dir = path.dirname(path.join(locks, containerPath)); dir !== locks; dir = path.dirname(dir)) {
    if (!(await fs.rmdir(dir).then(() => true, () => false))) break;
  }
}

/** A runtime whose mounter records any attempt to mount or unmount (there must be none) and lists through BindMounter. */
async function world() {
  const dir = await fs.mkdtemp(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const bind = new BindMounter();
  const calls: string[] = [];
  const mounter: Mounter = {
    mount: async (request) => {
      calls.push(`mount ${request.path}`);
      return bind.mount(request);
    },
    unmount: async (target) => {
      calls.push(`unmount ${target.path}`);
      return bind.unmount(target);
    },
    list: (at) => bind.list(at),
  };
  const runtime = new ContainerRuntime({ root, mounter });
  return {
    dir,
    root,
    runtime,
    calls,
    volumeDir: (volumeId: string) => path.join(root, 'volumes', volumeId),
    /** A busybox rootfs whose /var/run is a link to ../run, as in Debian images. */
    image: async (name: string) => {
      const rootfs = await busyboxRootfs(path.join(dir, 'rootfs', name));
      await fs.mkdir(path.join(rootfs, 'run'));
      await fs.mkdir(path.join(rootfs, 'var'));
      await fs.symlink('../run', path.join(rootfs, 'var/run'));
      return rootfs;
    },
  };
}

/**
 * Puts the state directory on a bind mount of itself with nosuid,nodev: LXC 5.0 does
 * not apply those two options to a read-write bind entry (it only remounts for `ro`),
 * but a bind mount keeps the flags of the mount it is taken from.
 */
async function nosuidNodevStore(root: string): Promise<void> {
  await fs.mkdir(root, { recursive: true });
  await execa('mount', ['--bind', root, root]);
  await execa('mount', ['-o', 'remount,bind,nosuid,nodev', root]);
}

/** `lxc-execute` of `sh -c script` in `rootfs`, with `entries` in its configuration; resolves when it exits. */
async function lxcRun(rootfs: string, entries: string[], script: string) {
  const name = `cv-${++runs}`;
  const config = path.join(base, `${name}.conf`);
  await fs.writeFile(
    config,
    [
      `lxc.uts.name = ${name}`,
      `lxc.rootfs.path = dir:${rootfs}`,
      'lxc.mount.auto = proc:mixed sys:ro',
      'lxc.net.0.type = empty',
      'lxc.apparmor.profile = unconfined',
      ...entries,
      '',
    ].join('\n'),
  );
  return execa('lxc-execute', ['-n', name, '-P', lxcPath, '-f', config, '--', '/bin/busybox', 'sh', '-c', script], {
    reject: false,
    stdin: 'ignore',
    timeout: 30_000,
  });
}

interface SeenMount {
  id: string;
  parent: string;
  options: string[];
}

/** Mount point → its mount, from a /proc/self/mountinfo printed inside a container (the last mount at a point wins). */
function mountsSeen(mountinfo: string): Record<string, SeenMount> {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  const out: Record<string, SeenMount> = {};
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ');
    if (f.length < 6) continue;
    out[unescape(f[4] as string)] = { id: f[0] as string, parent: f[1] as string, options: (f[5] as string).split(',') };
  }
  return out;
}

/** The destination field of each `lxc.mount.entry` line, as written. */
const destinations = (entries: string[]) => entries.map((line) => line.split(' ')[3]);

describe('LXC applies the exported lxc.mount.entry lines itself', () => {
  test('one container writes its volumes, a second sharing them :ro reads them and is refused every write', async () => {
    const { dir, root, runtime, calls, volumeDir, image } = await world();
    await nosuidNodevStore(root);
    // An absolute link of the image: on the host it would lead out of the rootfs.
    const outside = path.join(dir, 'outside');
    await fs.mkdir(outside);
    const dbRootfs = await image('db');
    await fs.symlink(outside, path.join(dbRootfs, 'srv'));
    const db = await runtime.create({ rootfs: dbRootfs, volumes: ['/data', '/data/logs', '/var/run/app', '/my data', '/srv/www'] });
    const reader = await runtime.create({ rootfs: await image('reader'), volumesFrom: [`${db.id}:ro`] });
    const volumeAt = (p: string) => volumeDir(db.volumes.find((v) => v.path === p)!.volumeId);

    const dbEntries = await runtime.lxcMountEntries(db.id);
    // Parents first; each where it lands inside the rootfs, links followed there, relative to it.
    const srvLanded = path.join(outside, 'www').slice(1);
    expect(destinations(dbEntries)).toEqual(['data', 'my\\040data', 'data/logs', 'run/app', srvLanded]);

    const wrote = await lxcRun(
      db.rootfs,
      dbEntries,
      [
        'echo db > /data/a',
        'echo log > /data/logs/b',
        'echo app > /var/run/app/c',
        'echo space > "/my data/d"',
        'echo www > /srv/www/e',
        // A mount the container makes inside a volume stays in its own namespace.
        'mkdir /data/tmp && mount -t tmpfs tmp /data/tmp',
        'cat /data/a /data/logs/b /run/app/c "/my data/d" /srv/www/e >&2',
        'cat /proc/self/mountinfo',
      ].join(' && '),
    );
    expect([wrote.exitCode, wrote.stderr]).toEqual([0, 'db\nlog\napp\nspace\nwww']);
    const dbSees = mountsSeen(wrote.stdout);
    const points = ['/data', '/data/logs', '/run/app', '/my data', path.join(outside, 'www')];
    for (const p of points) expect([p, dbSees[p]?.options]).toEqual([p, expect.arrayContaining(['rw', 'nosuid', 'nodev'])]);
    // The child was mounted on top of the parent's mount: it is seen through it.
    expect(dbSees['/data/logs']?.parent).toBe(dbSees['/data']?.id);
    expect(dbSees['/var/run/app']).toBeUndefined();

    // The data went into the volumes; LXC made the mount points inside the rootfs (and
    // the child's inside the parent volume), none through the links, none outside.
    expect((await fs.readdir(volumeAt('/data'))).sort()).toEqual(['a', 'logs', 'tmp']);
    expect(await fs.readdir(path.join(volumeAt('/data'), 'tmp'))).toEqual([]);
    expect(await fs.readFile(path.join(volumeAt('/data/logs'), 'b'), 'utf8')).toBe('log\n');
    expect(await fs.readFile(path.join(volumeAt('/var/run/app'), 'c'), 'utf8')).toBe('app\n');
    expect(await fs.readFile(path.join(volumeAt('/my data'), 'd'), 'utf8')).toBe('space\n');
    expect(await fs.readFile(path.join(volumeAt('/srv/www'), 'e'), 'utf8')).toBe('www\n');
    expect(await fs.readdir(path.join(db.rootfs, 'data'))).toEqual([]);
    expect(await fs.readdir(path.join(db.rootfs, 'run/app'))).toEqual([]);
    expect(await fs.readlink(path.join(db.rootfs, 'var/run'))).toBe('../run');
    expect(await fs.readdir(path.join(db.rootfs, srvLanded))).toEqual([]);
    expect(await fs.readdir(outside)).toEqual([]);

    const readerEntries = await runtime.lxcMountEntries(reader.id);
    expect(destinations(readerEntries)).toEqual(['data', 'my\\040data', 'data/logs', 'run/app', 'srv/www']);
    const read = await lxcRun(
      reader.rootfs,
      readerEntries,
      [
        'cat /data/a /data/logs/b /var/run/app/c "/my data/d" /srv/www/e >&2',
        'for d in /data /data/logs /var/run/app "/my data" /srv/www; do if echo x > "$d/w"; then echo "wrote $d" >&2; fi; done',
        'cat /proc/self/mountinfo',
      ].join('; '),
    );
    expect(read.exitCode).toBe(0);
    const refusals = read.stderr.split('\n').slice(5);
    expect(read.stderr.split('\n').slice(0, 5)).toEqual(['db', 'log', 'app', 'space', 'www']);
    expect(refusals).toHaveLength(5);
    for (const line of refusals) expect(line).toMatch(/Read-only file system$/);
    const readerSees = mountsSeen(read.stdout);
    for (const p of ['/data', '/data/logs', '/run/app', '/my data', '/srv/www']) {
      expect([p, readerSees[p]?.options]).toEqual([p, expect.arrayContaining(['ro', 'nosuid', 'nodev'])]);
    }
    expect((await fs.readdir(volumeAt('/data'))).sort()).toEqual(['a', 'logs', 'tmp']);

    // LXC's mounts lived and died with each container's namespace: none here, none
    // recorded, and the runtime's own mounter was never asked.
    expect(mountsUnder(base).map((m) => m.mountPoint)).toEqual([root]);
    expect((await runtime.get(db.id)).mounted).toBe(false);
    expect((await runtime.get(reader.id)).mounted).toBe(false);
    expect(calls).toEqual([]);
    await execa('umount', [root]);
    await runtime.remove(reader.id);
    await runtime.remove(db.id, { volumes: true });
    expect(await runtime.volumes.list()).toEqual([]);
  }, 60_000);

  test('a :ro share of a nested pair starts before its owner ever ran: the nested mount point is made inside the parent volume beforehand', async () => {
    const { root, runtime, volumeDir, image } = await world();
    const db = await runtime.create({ rootfs: await image('db'), volumes: ['/data', '/data/logs'] });
    const reader = await runtime.create({ rootfs: await image('reader'), volumesFrom: [`${db.id}:ro`] });
    expect(await fs.readdir(volumeDir(db.volumes[0]!.volumeId))).toEqual([]);
    // LXC could not make /data/logs itself: /data is read-only in this container by then.
    const entries = await runtime.lxcMountEntries(reader.id);
    expect(entries.join('\n')).not.toContain('create=');
    const early = await lxcRun(reader.rootfs, entries, 'ls /data && cat /proc/self/mountinfo');
    expect(early.exitCode).toBe(0);
    expect(early.stdout.split('\n')[0]).toBe('logs');
    expect(mountsSeen(early.stdout)['/data/logs']?.options).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    expect(mountsUnder(root)).toEqual([]);
  }, 60_000);

  test('a link a container leaves in its volume at a nested mount point is refused before LXC runs, and nothing is made through it', async () => {
    // LXC's own create=dir would run mkdir -p through the link on the host before its
    // safe_mount refuses it; the entries carry no create=dir, and the mount points are
    // made by a walk that follows no link.
    const { dir, runtime, volumeDir, image } = await world();
    const outside = path.join(dir, 'outside');
    await fs.mkdir(outside);
    const db = await runtime.create({ rootfs: await image('db'), volumes: ['/data', '/data/logs/app'] });
    // Put there from the host, as the container could itself: /data is its own, writable.
    await fs.symlink(outside, path.join(volumeDir(db.volumes[0]!.volumeId), 'logs'));

    await expect(runtime.lxcMountEntries(db.id)).rejects.toMatchObject({ code: 'ERR_PATH_ESCAPES_ROOTFS' });
    expect(await fs.readdir(outside)).toEqual([]);
    // Entries written before the link appeared: LXC, creating nothing, refuses the link itself.
    await fs.unlink(path.join(volumeDir(db.volumes[0]!.volumeId), 'logs'));
    const entries = await runtime.lxcMountEntries(db.id);
    await fs.rm(path.join(volumeDir(db.volumes[0]!.volumeId), 'logs'), { recursive: true });
    await fs.symlink(outside, path.join(volumeDir(db.volumes[0]!.volumeId), 'logs'));
    const started = await lxcRun(db.rootfs, entries, 'true');
    expect(started.exitCode).not.toBe(0);
    expect(started.stderr).toMatch(/was a symbolic link!/);
    expect(await fs.readdir(outside)).toEqual([]);
    expect(mountsUnder(base)).toEqual([]);
  }, 60_000);

  test('LXC 5.0 leaves a read-write volume without nosuid,nodev unless its store is mounted nosuid,nodev', async () => {
    // What this pins is LXC's behaviour, documented in docs/other-runtimes.md: if it
    // fails, LXC now applies the options itself and that page must say so.
    const { runtime, image } = await world();
    const db = await runtime.create({ rootfs: await image('db'), volumes: ['/rw'] });
    const reader = await runtime.create({ rootfs: await image('reader'), volumesFrom: [`${db.id}:ro`] });
    const own = await lxcRun(db.rootfs, await runtime.lxcMountEntries(db.id), 'cat /proc/self/mountinfo');
    const shared = await lxcRun(reader.rootfs, await runtime.lxcMountEntries(reader.id), 'cat /proc/self/mountinfo');
    expect([own.exitCode, shared.exitCode]).toEqual([0, 0]);
    const rw = mountsSeen(own.stdout)['/rw']?.options ?? [];
    expect(rw).toContain('rw');
    expect(rw).not.toContain('nosuid');
    expect(rw).not.toContain('nodev');
    expect(mountsSeen(shared.stdout)['/rw']?.options).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
  }, 60_000);
});

import fs from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa, type ResultPromise } from 'execa';
import { BindMounter, ContainerRuntime, type IdMap, type OciMount } from '../../src/index.js';
import { busyboxRootfs } from '../helpers/busybox-rootfs.js';
import { cleanupTemp, expectCode, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

// A container with a user namespace: the test makes the namespace itself (unshare --user,
// the maps written by hand from here, as a runtime would), and runs commands in it with
// nsenter, which makes them its root (uid 0 inside) unless told another id.

const mapping = (hostID: number): IdMap => ({
  uidMappings: [{ containerID: 0, hostID, size: 65536 }],
  gidMappings: [{ containerID: 0, hostID, size: 65536 }],
});

let base: string;
const holders: ResultPromise[] = [];

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('idmap-');
  // Processes of the user namespaces must be able to walk to the rootfs.
  await fs.chmod(base, 0o755);
});

afterAll(async () => {
  for (const holder of holders) holder.kill('SIGKILL');
  await Promise.allSettled(holders);
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** A process in a new user namespace with `map`, whose maps this process wrote; runs commands in it. */
async function userNamespace(map: IdMap) {
  const holder = execa('unshare', ['--user', '--', 'sh', '-c', 'echo && exec sleep infinity'], { stdin: 'ignore', stdout: 'pipe' });
  holders.push(holder);
  await new Promise((resolve) => holder.stdout?.once('data', resolve));
  const lines = (ranges: IdMap['uidMappings']) => ranges.map((r) => `${r.containerID} ${r.hostID} ${r.size}\n`).join('');
  await fs.writeFile(`/proc/${holder.pid}/uid_map`, lines(map.uidMappings));
  await fs.writeFile(`/proc/${holder.pid}/gid_map`, lines(map.gidMappings));
  return {
    /** `sh -c script` as uid:gid inside the namespace (root by default), in this mount namespace. */
    run: (script: string, id = 0) =>
      execa('nsenter', ['--user', '--target', String(holder.pid), '--setuid', String(id), '--setgid', String(id), '--', 'sh', '-c', script], { reject: false }),
  };
}

async function world(engine: 'kernel' | 'util-linux', stateDir?: string) {
  const dir = await fs.mkdtemp(path.join(base, 'w-'));
  await fs.chmod(dir, 0o755);
  const root = stateDir ?? path.join(dir, 'state');
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter({ engine }) });
  return {
    runtime,
    volumeDir: (volumeId: string) => path.join(root, 'volumes', volumeId),
    async rootfs(name: string) {
      const rootfs = path.join(dir, name);
      await fs.mkdir(rootfs, { recursive: true, mode: 0o755 });
      return rootfs;
    },
  };
}

const owner = async (file: string) => {
  const stat = await fs.stat(file);
  return `${stat.uid}:${stat.gid}`;
};

describe('idmapped volumes with the kernel engine', () => {
  test('owners on disk are the owners inside the user namespace; the host sees the mapped ids through the mount', async () => {
    const { runtime, volumeDir, rootfs } = await world('kernel');
    const fsRoot = await rootfs('db');
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/data'], idmap: mapping(100000) });
    expect((await runtime.get(c.id)).idmap).toEqual(mapping(100000));
    const data = volumeDir(c.volumes[0]!.volumeId);
    await fs.writeFile(path.join(data, 'by-root'), 'r');
    await fs.mkdir(path.join(data, 'home'));
    await fs.chown(path.join(data, 'home'), 1000, 1000);

    await runtime.mount(c.id);
    const [mount] = mountsUnder(fsRoot);
    expect(mount?.mountPoint).toBe(path.join(fsRoot, 'data'));
    expect(mount?.options).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev', 'idmapped']));
    // From the host, through the mount: the ids the mapping gives.
    expect(await owner(path.join(fsRoot, 'data/by-root'))).toBe('100000:100000');
    expect(await owner(path.join(fsRoot, 'data/home'))).toBe('101000:101000');

    const ns = await userNamespace(mapping(100000));
    const inside = await ns.run(`stat -c %u:%g ${fsRoot}/data/by-root ${fsRoot}/data/home`);
    expect([inside.exitCode, inside.stdout]).toEqual([0, '0:0\n1000:1000']);
    // Written inside by its root and by its uid 1000: on disk with those very ids.
    expect((await ns.run(`echo made > ${fsRoot}/data/made`)).exitCode).toBe(0);
    expect((await ns.run(`echo mine > ${fsRoot}/data/home/mine`, 1000)).exitCode).toBe(0);
    expect(await owner(path.join(data, 'made'))).toBe('0:0');
    expect(await owner(path.join(data, 'home/mine'))).toBe('1000:1000');
    expect(await owner(path.join(fsRoot, 'data/made'))).toBe('100000:100000');
    // Host root has no id through the mapping: it cannot create files through the mount.
    await expect(fs.writeFile(path.join(fsRoot, 'data/from-host'), 'x')).rejects.toMatchObject({ code: 'EOVERFLOW' });

    await runtime.unmount(c.id);
    expect(mountsUnder(fsRoot)).toEqual([]);
  });

  test('a :ro share is mounted with the sharing container\'s own mapping, and stays read-only', async () => {
    const { runtime, volumeDir, rootfs } = await world('kernel');
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data'], idmap: mapping(100000) });
    await fs.writeFile(path.join(volumeDir(db.volumes[0]!.volumeId), 'f'), 'x');
    const readerRoot = await rootfs('reader');
    const reader = await runtime.create({ rootfs: readerRoot, volumesFrom: [`${db.id}:ro`], idmap: mapping(200000) });
    await runtime.mount(reader.id);
    expect(mountsUnder(readerRoot).map((m) => m.options)).toEqual([expect.arrayContaining(['ro', 'idmapped'])]);
    expect(await owner(path.join(readerRoot, 'data/f'))).toBe('200000:200000');
    const ns = await userNamespace(mapping(200000));
    const seen = await ns.run(`stat -c %u ${readerRoot}/data/f; echo no > ${readerRoot}/data/f`);
    expect(seen.stdout).toBe('0');
    expect(seen.exitCode).not.toBe(0);
    expect(seen.stderr).toMatch(/Read-only file system/);
    expect(await fs.readFile(path.join(volumeDir(db.volumes[0]!.volumeId), 'f'), 'utf8')).toBe('x');
    await runtime.unmount(reader.id);
  });

  test('nested volumes of an idmapped container: the mount point inside the parent is made before it is idmapped', async () => {
    const { runtime, volumeDir, rootfs } = await world('kernel');
    const fsRoot = await rootfs('nested');
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/srv', '/srv/cache/deep'], idmap: mapping(100000) });
    await runtime.mount(c.id);
    expect(mountsUnder(fsRoot).map((m) => [path.relative(fsRoot, m.mountPoint), m.options.includes('idmapped')])).toEqual([
      ['srv', true],
      ['srv/cache/deep', true],
    ]);
    const parent = volumeDir(c.volumes.find((v) => v.path === '/srv')!.volumeId);
    expect(await owner(path.join(parent, 'cache/deep'))).toBe('0:0');
    await runtime.unmount(c.id);
    expect(mountsUnder(fsRoot)).toEqual([]);
  });

  test('a file system without idmapped mounts (ramfs) is refused with ERR_IDMAP_UNSUPPORTED naming it, and nothing is mounted', async () => {
    const store = path.join(base, `ramfs-${randomUUID()}`);
    await fs.mkdir(store);
    await execa('mount', ['-t', 'ramfs', 'ramfs', store]);
    const { runtime, rootfs } = await world('kernel', path.join(store, 'state'));
    const fsRoot = await rootfs('c');
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/a', '/b'], idmap: mapping(100000) });
    const error = await expectCode(runtime.mount(c.id), 'ERR_IDMAP_UNSUPPORTED');
    expect(error.message).toMatch(/ramfs/);
    expect(mountsUnder(fsRoot)).toEqual([]);
    expect((await runtime.get(c.id)).mounted).toBe(false);
  });
});

describe('attach of an idmapped container to a running process in a user namespace', () => {
  test('the volume appears in its mount namespace idmapped: owners on disk are the owners inside, and detach takes it out', async () => {
    const { runtime, volumeDir, rootfs } = await world('kernel');
    const place = await rootfs('seen-by-the-process');
    const c = await runtime.create({ rootfs: await rootfs('app'), volumes: [`${place}/data`], idmap: mapping(200000), copyUp: false });
    const data = volumeDir(c.volumes[0]!.volumeId);
    await fs.writeFile(path.join(data, 'by-root'), 'r');
    // A process in a user namespace and a mount namespace of its own (owned by that user namespace).
    const holder = execa('unshare', ['--user', '--mount', '--', 'sh', '-c', 'echo && exec sleep infinity'], { stdin: 'ignore', stdout: 'pipe' });
    holders.push(holder);
    await new Promise((resolve) => holder.stdout?.once('data', resolve));
    const lines = (ranges: IdMap['uidMappings']) => ranges.map((r) => `${r.containerID} ${r.hostID} ${r.size}\n`).join('');
    await fs.writeFile(`/proc/${holder.pid}/uid_map`, lines(mapping(200000).uidMappings));
    await fs.writeFile(`/proc/${holder.pid}/gid_map`, lines(mapping(200000).gidMappings));
    const inside = (script: string) => execa('nsenter', ['--user', '--mount', '--target', String(holder.pid), '--', 'sh', '-c', script], { reject: false });

    expect(await runtime.attach(c.id, { pid: holder.pid as number })).toMatchObject({ attached: [`${place}/data`] });
    const mountinfo = await fs.readFile(`/proc/${holder.pid}/mountinfo`, 'utf8');
    const line = mountinfo.split('\n').find((l) => l.split(' ')[4] === `${place}/data`);
    expect(line?.split(' ')[5]?.split(',')).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev', 'idmapped']));
    expect(mountsUnder(place)).toEqual([]);
    const seen = await inside(`stat -c %u:%g ${place}/data/by-root && echo made > ${place}/data/made && stat -c %u:%g ${place}/data/made`);
    expect([seen.exitCode, seen.stdout]).toEqual([0, '0:0\n0:0']);
    expect(await owner(path.join(data, 'made'))).toBe('0:0');

    expect(await runtime.detach(c.id, { pid: holder.pid as number })).toMatchObject({ detached: [`${place}/data`] });
    expect((await fs.readFile(`/proc/${holder.pid}/mountinfo`, 'utf8')).includes(`${place}/data`)).toBe(false);
    holder.kill('SIGKILL');
  });
});

describe('the util-linux engine', () => {
  test('refuses an idmapped container with ERR_IDMAP_UNSUPPORTED naming the kernel engine, before mounting anything', async () => {
    const { runtime, rootfs } = await world('util-linux');
    const fsRoot = await rootfs('c');
    const plain = await runtime.create({ rootfs: await rootfs('plain'), volumes: ['/data'] });
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/data', '/logs'], idmap: mapping(100000) });
    const error = await expectCode(runtime.mount(c.id), 'ERR_IDMAP_UNSUPPORTED');
    expect(error.message).toMatch(/kernel mount engine/);
    expect(error.message).toContain(c.id);
    expect(mountsUnder(fsRoot)).toEqual([]);
    expect((await runtime.get(c.id)).mounted).toBe(false);
    // A direct caller of the mounter is refused too.
    await expectCode(
      new BindMounter({ engine: 'util-linux' }).mount({ source: fsRoot, rootfs: await rootfs('direct'), path: '/x', mode: 'rw', idmap: mapping(100000) }),
      'ERR_IDMAP_UNSUPPORTED',
    );
    // A container without a mapping still mounts.
    await runtime.mount(plain.id);
    await runtime.unmount(plain.id);
  });
});

describe('runc and the exported uidMappings', () => {
  let runcState: string;
  beforeAll(async () => {
    runcState = path.join(base, 'runc-state');
  });

  /** `runc run` of `sh -c script` with `mounts` added to runc's default config (no user namespace of its own). */
  async function runcRun(rootfs: string, mounts: OciMount[], script: string) {
    const bundle = await fs.mkdtemp(path.join(base, 'bundle-'));
    await execa('runc', ['spec', '--bundle', bundle]);
    const configFile = path.join(bundle, 'config.json');
    const config = JSON.parse(await fs.readFile(configFile, 'utf8'));
    config.process.terminal = false;
    config.process.args = ['/bin/sh', '-c', script];
    config.root = { path: rootfs, readonly: false };
    config.mounts.push(...mounts);
    await fs.writeFile(configFile, JSON.stringify(config, null, 2));
    return execa('runc', ['--root', runcState, 'run', '--bundle', bundle, `cv-${randomUUID()}`], { reject: false, stdin: 'ignore', timeout: 30_000 });
  }

  test('runc 1.1 ignores uidMappings and the idmap option and mounts the volume plain; `runc features` tells (no idmap among its mountOptions)', async () => {
    const { runtime, volumeDir, rootfs } = await world('kernel');
    const fsRoot = await busyboxRootfs(await rootfs('busybox'));
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/data'], idmap: mapping(100000) });
    await fs.writeFile(path.join(volumeDir(c.volumes[0]!.volumeId), 'f'), 'x');
    const mounts = await runtime.ociMounts(c.id);
    expect(mounts).toEqual([expect.objectContaining({ options: expect.arrayContaining(['idmap']), ...mapping(100000) })]);
    const features = JSON.parse((await execa('runc', ['features'])).stdout) as { mountOptions?: string[] };
    const ran = await runcRun(fsRoot, mounts, 'stat -c %u /data/f; grep " /data " /proc/self/mountinfo');
    expect(ran.exitCode).toBe(0);
    const [uid, mountinfo] = ran.stdout.split('\n');
    if (features.mountOptions?.includes('idmap')) {
      // runc runs in the host's user namespace here (no user namespace in its config): it sees the mapped id.
      expect([uid, mountinfo]).toEqual(['100000', expect.stringContaining('idmapped')]);
    } else {
      // Debian 12's runc 1.1.5: the fields are unknown to it and `idmap` goes to mount(2) as data, which a bind ignores.
      expect([uid, mountinfo]).toEqual(['0', expect.not.stringContaining('idmapped')]);
    }
  });
});

import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { BindMounter, ContainerRuntime, type OciMount } from '../../src/index.js';
import { busyboxRootfs } from '../helpers/busybox-rootfs.js';
import { cleanupTemp, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace, requireCommand } from './guard.js';

// runc, not the library, makes every volume mount here: the runtime is never asked to
// `mount`, and each runc container mounts its volumes in its own mount namespace.

let base: string;
let runcState: string;

beforeAll(async () => {
  assertPrivateMountNamespace();
  await requireCommand('runc', ['--version'], 'apt-get install runc');
  base = await tempDir('runc-');
  runcState = path.join(base, 'runc-state');
});

afterAll(async () => {
  if (base) {
    for (const id of await runcContainers()) {
      await execa('runc', ['--root', runcState, 'delete', '--force', id], { reject: false });
    }
    unmountAllUnder(base);
  }
  await cleanupTemp();
});

async function runcContainers(): Promise<string[]> {
  const { stdout } = await execa('runc', ['--root', runcState, 'list', '--quiet'], { reject: false });
  return stdout.split('\n').filter(Boolean);
}

async function world() {
  const dir = await fs.mkdtemp(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  const volumeDir = (volumeId: string) => path.join(root, 'volumes', volumeId);
  return {
    runtime,
    volumeDir,
    rootfs: (name: string) => busyboxRootfs(path.join(dir, 'rootfs', name)),
    mountsOf: (containerId: string) => runtime.ociMounts(containerId),
  };
}

interface RuncConfig {
  process: { terminal: boolean; args: string[] };
  root: { path: string; readonly: boolean };
  mounts: unknown[];
}

/** `runc run` of `/bin/sh -c script` in `rootfs` with `mounts` added to runc's default config; resolves when it exits. */
async function runcRun(rootfs: string, mounts: OciMount[], script: string) {
  const bundle = await fs.mkdtemp(path.join(base, 'bundle-'));
  await execa('runc', ['spec', '--bundle', bundle]);
  const configFile = path.join(bundle, 'config.json');
  const config = JSON.parse(await fs.readFile(configFile, 'utf8')) as RuncConfig;
  config.process.terminal = false;
  config.process.args = ['/bin/sh', '-c', script];
  config.root = { path: rootfs, readonly: false };
  config.mounts.push(...mounts);
  await fs.writeFile(configFile, JSON.stringify(config, null, 2));
  return execa('runc', ['--root', runcState, 'run', '--bundle', bundle, `cv-${randomUUID()}`], {
    reject: false,
    stdin: 'ignore',
    timeout: 30_000,
  });
}

/** Mount point → options, for the given mount points, from a /proc/self/mountinfo printed inside a container. */
function optionsAt(mountinfo: string, mountPoints: string[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const line of mountinfo.split('\n')) {
    const fields = line.split(' ');
    const at = fields[4];
    if (at !== undefined && mountPoints.includes(at)) out[at] = (fields[5] as string).split(',');
  }
  return out;
}

describe('runc applies the exported OCI mounts itself', () => {
  test('a volume path through symlinks of the image lands where runc puts it and where runtime.mount puts it', async () => {
    const { runtime, volumeDir, rootfs, mountsOf } = await world();
    const fsRoot = await rootfs('links');
    await fs.mkdir(path.join(fsRoot, 'run'), { recursive: true });
    await fs.mkdir(path.join(fsRoot, 'var'), { recursive: true });
    await fs.symlink('../run', path.join(fsRoot, 'var/run'));
    await fs.symlink('/data', path.join(fsRoot, 'srv'));
    const c = await runtime.create({ rootfs: fsRoot, volumes: ['/var/run/postgresql', '/srv/www'] });
    const mounts = await mountsOf(c.id);
    // The configured paths go to runc, which resolves them inside the rootfs itself.
    expect(mounts.map((m) => m.destination).sort()).toEqual(['/srv/www', '/var/run/postgresql']);
    const ran = await runcRun(
      fsRoot,
      mounts,
      'echo pg > /var/run/postgresql/f && echo www > /srv/www/g && grep -E " /(run/postgresql|data/www) " /proc/self/mountinfo | cut -d" " -f5 | sort',
    );
    expect([ran.exitCode, ran.stdout, ran.stderr]).toEqual([0, '/data/www\n/run/postgresql', '']);
    const volumeAt = (p: string) => volumeDir(c.volumes.find((v) => v.path === p)!.volumeId);
    expect(await fs.readFile(path.join(volumeAt('/var/run/postgresql'), 'f'), 'utf8')).toBe('pg\n');
    expect(await fs.readFile(path.join(volumeAt('/srv/www'), 'g'), 'utf8')).toBe('www\n');
    // The library's own mounts land on the same two directories.
    await runtime.mount(c.id);
    expect(mountsUnder(fsRoot).map((m) => path.relative(fsRoot, m.mountPoint)).sort()).toEqual(['data/www', 'run/postgresql']);
    await runtime.unmount(c.id);
    expect(mountsUnder(fsRoot)).toEqual([]);
  });

  test('data written in one runc container is read in another sharing its volumes :ro, which cannot write', async () => {
    const { runtime, volumeDir, rootfs, mountsOf } = await world();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/data/nested', '/logs'] });
    const reader = await runtime.create({ rootfs: await rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    const volumeAt = (p: string) => volumeDir(db.volumes.find((v) => v.path === p)!.volumeId);
    const dbMounts = await mountsOf(db.id);
    const readerMounts = await mountsOf(reader.id);
    expect(dbMounts.map((m) => m.destination)).toEqual(['/data', '/logs', '/data/nested']);

    const wrote = await runcRun(
      db.rootfs,
      dbMounts,
      'echo db > /data/a && echo nested > /data/nested/b && echo log > /logs/c && cat /data/a /data/nested/b /logs/c',
    );
    expect([wrote.exitCode, wrote.stdout, wrote.stderr]).toEqual([0, 'db\nnested\nlog', '']);
    // The data is in the volumes where the library keeps them, not in the rootfs.
    expect(await fs.readFile(path.join(volumeAt('/data'), 'a'), 'utf8')).toBe('db\n');
    expect(await fs.readFile(path.join(volumeAt('/data/nested'), 'b'), 'utf8')).toBe('nested\n');
    expect(await fs.readFile(path.join(volumeAt('/logs'), 'c'), 'utf8')).toBe('log\n');
    expect(await fs.readdir(path.join(db.rootfs, 'data'))).toEqual([]);

    const read = await runcRun(reader.rootfs, readerMounts, 'cat /data/a /data/nested/b /logs/c');
    expect([read.exitCode, read.stdout, read.stderr]).toEqual([0, 'db\nnested\nlog', '']);

    for (const dir of ['/data', '/data/nested', '/logs']) {
      const refused = await runcRun(reader.rootfs, readerMounts, `echo x > ${dir}/w`);
      expect(refused.exitCode).not.toBe(0);
      expect(refused.stderr).toMatch(/Read-only file system/);
    }
    expect((await fs.readdir(volumeAt('/data'))).sort()).toEqual(['a', 'nested']);

    const points = ['/data', '/data/nested', '/logs'];
    const seen = await runcRun(reader.rootfs, readerMounts, 'cat /proc/self/mountinfo');
    const options = optionsAt(seen.stdout, points);
    expect(Object.keys(options).sort()).toEqual(points.sort());
    for (const p of points) expect(options[p]).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));

    // runc mounted in the containers' namespaces only, and `runc run` deleted each container.
    expect(mountsUnder(base)).toEqual([]);
    expect(await runcContainers()).toEqual([]);
  }, 60_000);

  test('a mount made inside a volume directory on the host does not reach the container: bind, not rbind', async () => {
    const { runtime, volumeDir, rootfs, mountsOf } = await world();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data'] });
    const reader = await runtime.create({ rootfs: await rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    const sub = path.join(volumeDir(db.volumes[0]!.volumeId), 'sub');
    await fs.mkdir(sub);
    await execa('mount', ['-t', 'tmpfs', 'tmpfs', sub]);
    try {
      // With rbind, runc 1.1 would carry this tmpfs in writable: its 'ro' remount only covers the top mount.
      const result = await runcRun(
        reader.rootfs,
        await mountsOf(reader.id),
        "if grep -q ' /data/sub ' /proc/self/mountinfo; then echo carried; fi; echo x > /data/sub/w",
      );
      expect(result.stdout).toBe('');
      expect(result.exitCode).not.toBe(0);
      expect(result.stderr).toMatch(/Read-only file system/);
    } finally {
      await execa('umount', [sub]);
    }
    expect(mountsUnder(base)).toEqual([]);
  }, 60_000);
});

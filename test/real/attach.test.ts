import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { type AttachRequest, type AttachTarget, BindMounter, ContainerRuntime, FakeMounter, type Mounter, type OciMount } from '../../src/index.js';
import { busyboxRootfs } from '../helpers/busybox-rootfs.js';
import { cleanupTemp, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace, requireCommand } from './guard.js';

// Containers run by runc from `ociMounts`, detached (`runc run -d`, a `sleep` as their
// process); the library then attaches and detaches volumes in their mount namespaces.

let base: string;
let runcState: string;

beforeAll(async () => {
  assertPrivateMountNamespace();
  await requireCommand('runc', ['--version'], 'apt-get install runc');
  base = await tempDir('attach-');
  runcState = path.join(base, 'runc-state');
});

afterAll(async () => {
  if (base) {
    const { stdout } = await execa('runc', ['--root', runcState, 'list', '--quiet'], { reject: false });
    for (const id of stdout.split('\n').filter(Boolean)) await execa('runc', ['--root', runcState, 'delete', '--force', id], { reject: false });
    unmountAllUnder(base);
  }
  await cleanupTemp();
});

async function world(mounter: Mounter = new BindMounter({ engine: 'kernel' })) {
  const dir = await fs.mkdtemp(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const runtime = new ContainerRuntime({ root, mounter });
  return {
    runtime,
    root,
    volumeDir: (volumeId: string) => path.join(root, 'volumes', volumeId),
    rootfs: (name: string) => busyboxRootfs(path.join(dir, 'rootfs', name)),
  };
}

interface Running {
  id: string;
  pid: number;
  /** `sh -c script` run inside the container with `runc exec`. */
  exec(script: string): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }>;
  /** The container's own /proc/self/mountinfo: mount point → options. */
  mounts(): Promise<Map<string, string[]>>;
}

/** `runc run -d` of `sleep` in `rootfs` with `mounts` added to runc's default config. */
async function runcStart(rootfs: string, mounts: OciMount[]): Promise<Running> {
  const bundle = await fs.mkdtemp(path.join(base, 'bundle-'));
  await execa('runc', ['spec', '--bundle', bundle]);
  const configFile = path.join(bundle, 'config.json');
  const config = JSON.parse(await fs.readFile(configFile, 'utf8')) as { process: { terminal: boolean; args: string[] }; root: unknown; mounts: unknown[] };
  config.process.terminal = false;
  config.process.args = ['sleep', '3600'];
  config.root = { path: rootfs, readonly: false };
  config.mounts.push(...mounts);
  await fs.writeFile(configFile, JSON.stringify(config, null, 2));
  const id = `cv-${randomUUID()}`;
  await execa('runc', ['--root', runcState, 'run', '-d', '--bundle', bundle, id], { stdio: 'ignore', timeout: 30_000 });
  const state = JSON.parse((await execa('runc', ['--root', runcState, 'state', id])).stdout) as { pid: number };
  const exec = (script: string) =>
    execa('runc', ['--root', runcState, 'exec', id, 'sh', '-c', script], { reject: false, stdin: 'ignore', timeout: 30_000 }).then((r) => ({
      exitCode: r.exitCode,
      stdout: String(r.stdout),
      stderr: String(r.stderr),
    }));
  return {
    id,
    pid: state.pid,
    exec,
    async mounts() {
      const out = new Map<string, string[]>();
      for (const line of (await exec('cat /proc/self/mountinfo')).stdout.split('\n')) {
        const fields = line.split(' ');
        if (fields[4] !== undefined) out.set(fields[4], (fields[5] as string).split(','));
      }
      return out;
    },
  };
}

async function stop(c: Running) {
  await execa('runc', ['--root', runcState, 'delete', '--force', c.id], { reject: false });
}

/** Mount points of this test's own namespace under the test's directory: attaching must never add one. */
const ownMounts = () => mountsUnder(base).map((m) => m.mountPoint);

describe('attach: volumes added to a container runc runs, without restarting it', () => {
  test('a new volume and another container’s volumes :ro attached, used, detached; nothing of it in our namespace', async () => {
    const { runtime, volumeDir, rootfs } = await world();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data', '/data/nested'] });
    await fs.writeFile(path.join(volumeDir(db.volumes[0]!.volumeId), 'from-db'), 'db\n');
    const app = await runtime.create({ rootfs: await rootfs('app'), volumes: ['/logs'] });
    const c = await runcStart(app.rootfs, await runtime.ociMounts(app.id));
    try {
      const before = ownMounts();
      // runc made /logs; attaching finds nothing missing and leaves it alone.
      expect(await runtime.attach(app.id, { pid: c.pid })).toMatchObject({ attached: [], present: ['/logs'], container: { attachedTo: [{ pid: c.pid }] } });

      // A volume created while it runs, attached.
      const [cache] = await runtime.createVolumes(app.id, ['/var/cache/app']);
      const added = await runtime.attach(app.id, { pid: c.pid });
      expect(added).toMatchObject({ attached: ['/var/cache/app'], present: ['/logs'] });
      const wrote = await c.exec('echo hello > /var/cache/app/f && cat /var/cache/app/f');
      expect([wrote.exitCode, wrote.stdout]).toEqual([0, 'hello']);
      expect(readFileSync(path.join(volumeDir(cache!.volumeId), 'f'), 'utf8')).toBe('hello\n');
      expect((await c.mounts()).get('/var/cache/app')).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev']));

      // Another container's volumes, shared read-only, attached read-only.
      await runtime.shareVolumesFrom(app.id, db.id, { mode: 'ro' });
      expect((await runtime.attach(app.id, { pid: c.pid })).attached).toEqual(['/data', '/data/nested']);
      const read = await c.exec('cat /data/from-db');
      expect([read.exitCode, read.stdout]).toEqual([0, 'db']);
      for (const dir of ['/data', '/data/nested']) {
        const refused = await c.exec(`echo x > ${dir}/w`);
        expect(refused.exitCode).not.toBe(0);
        expect(refused.stderr).toMatch(/Read-only file system/);
        expect((await c.mounts()).get(dir)).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
      }
      expect(ownMounts()).toEqual(before);

      // While attached: the container cannot be removed, its volumes cannot be deleted.
      await expect(runtime.remove(app.id, { force: true })).rejects.toMatchObject({ code: 'ERR_CONTAINER_ATTACHED' });
      await runtime.remove(db.id); // its volumes stay: app still names them
      await expect(runtime.volumes.remove(db.volumes[0]!.volumeId)).rejects.toMatchObject({ code: 'ERR_VOLUME_IN_USE' });

      // Detached: gone from the container, data still in the volumes.
      expect((await runtime.detach(app.id, { pid: c.pid, paths: ['/data', '/data/nested'] })).detached).toEqual(['/data/nested', '/data']);
      expect(await runtime.detach(app.id, { pid: c.pid, paths: ['/data'] })).toMatchObject({ detached: [] });
      let seen = await c.mounts();
      expect([seen.has('/data'), seen.has('/data/nested'), seen.has('/var/cache/app')]).toEqual([false, false, true]);
      const all = await runtime.detach(app.id, { pid: c.pid });
      expect(all.detached.sort()).toEqual(['/logs', '/var/cache/app']);
      expect(all.container.attachedTo).toBeUndefined();
      seen = await c.mounts();
      expect([seen.has('/logs'), seen.has('/var/cache/app')]).toEqual([false, false]);
      expect(readFileSync(path.join(volumeDir(cache!.volumeId), 'f'), 'utf8')).toBe('hello\n');
      expect(readFileSync(path.join(volumeDir(db.volumes[0]!.volumeId), 'from-db'), 'utf8')).toBe('db\n');
      expect(ownMounts()).toEqual(before);
      // Detached, it can be removed with its volumes.
      await runtime.remove(app.id, { volumes: true });
      expect(await runtime.volumes.list()).toEqual([]);
    } finally {
      await stop(c);
    }
  }, 120_000);

  test('a symlink in the container pointing out (absolute, ..) is followed inside its root only', async () => {
    const { runtime, volumeDir, rootfs } = await world();
    const fsRoot = await rootfs('links');
    const app = await runtime.create({ rootfs: fsRoot });
    const c = await runcStart(fsRoot, []);
    try {
      // Made while it runs, as an image would have them: out of the root, were they followed on the host.
      await fs.symlink('/tmp', path.join(fsRoot, 'abs'));
      await fs.symlink('../../../../../../../../etc', path.join(fsRoot, 'up'));
      const [a, b] = await runtime.createVolumes(app.id, ['/abs/a', '/up/b'], { copyUp: false });
      expect((await runtime.attach(app.id, { pid: c.pid })).attached).toEqual(['/abs/a', '/up/b']);
      await c.exec('echo A > /tmp/a/f; echo B > /etc/b/f');
      expect(readFileSync(path.join(volumeDir(a!.volumeId), 'f'), 'utf8')).toBe('A\n');
      expect(readFileSync(path.join(volumeDir(b!.volumeId), 'f'), 'utf8')).toBe('B\n');
      const seen = await c.mounts();
      expect([seen.has('/tmp/a'), seen.has('/etc/b')]).toEqual([true, true]);
      // The mount points were made in the container's rootfs, never on the host.
      expect((await fs.stat(path.join(fsRoot, 'etc/b'))).isDirectory()).toBe(true);
      await expect(fs.stat('/etc/b')).rejects.toMatchObject({ code: 'ENOENT' });
      expect(ownMounts()).toEqual([]);
      await runtime.detach(app.id, { pid: c.pid });
    } finally {
      await stop(c);
    }
  }, 60_000);

  test('refusals are coded and change nothing', async () => {
    const { runtime, rootfs, root } = await world();
    const fsRoot = await rootfs('refusals');
    const app = await runtime.create({ rootfs: fsRoot, volumes: ['/data', '/other'] });
    const c = await runcStart(fsRoot, []);
    const configFile = path.join(root, 'containers', `${app.id}.json`);
    const stored = readFileSync(configFile, 'utf8');
    try {
      // Something else mounted at one path: the whole call refused, the other path not attached either.
      // (runc's process has no CAP_SYS_ADMIN: mounted from outside, by the container's own busybox.)
      await fs.mkdir(path.join(fsRoot, 'other'));
      await execa('nsenter', [`--mount=/proc/${c.pid}/ns/mnt`, '--', '/bin/mount', '-t', 'tmpfs', 'tmpfs', '/other']);
      await expect(runtime.attach(app.id, { pid: c.pid })).rejects.toMatchObject({ code: 'ERR_MOUNT_POINT_IN_USE' });
      expect((await c.mounts()).has('/data')).toBe(false);
      expect(readFileSync(configFile, 'utf8')).toBe(stored);
      // Detach leaves a mount that is not the volume.
      expect(await runtime.detach(app.id, { pid: c.pid })).toMatchObject({ detached: [] });
      expect((await c.mounts()).get('/other')).toBeDefined();

      // A path landing under /proc of the container.
      await fs.symlink('/proc/sys', path.join(fsRoot, 'kernel'));
      const p = await runtime.create({ rootfs: fsRoot, volumes: ['/kernel/x'], copyUp: false });
      await expect(runtime.attach(p.id, { pid: c.pid })).rejects.toMatchObject({ code: 'ERR_INVALID_VOLUME_PATH' });

      // Our own namespace; a process that is gone; a pid that is no pid.
      await expect(runtime.attach(app.id, { pid: process.pid })).rejects.toMatchObject({ code: 'ERR_ATTACH_OWN_NAMESPACE' });
      const gone = execa('true');
      await gone;
      await expect(runtime.attach(app.id, { pid: gone.pid! })).rejects.toMatchObject({ code: 'ERR_PROCESS_NOT_FOUND' });
      for (const pid of [0, -1, 1.5, '1', undefined]) {
        await expect(runtime.attach(app.id, { pid } as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
      }
      expect(readFileSync(configFile, 'utf8')).toBe(stored);

      // The util-linux engine, and a mounter without attach.
      const utilLinux = new ContainerRuntime({ root, mounter: new BindMounter({ engine: 'util-linux' }) });
      await expect(utilLinux.attach(app.id, { pid: c.pid })).rejects.toMatchObject({ code: 'ERR_ATTACH_UNSUPPORTED', message: expect.stringMatching(/kernel engine/) });
      const fake = new FakeMounter();
      const custom = new ContainerRuntime({ root, mounter: { mount: fake.mount.bind(fake), unmount: fake.unmount.bind(fake), list: fake.list.bind(fake) } });
      await expect(custom.attach(app.id, { pid: c.pid })).rejects.toMatchObject({ code: 'ERR_ATTACH_UNSUPPORTED' });
      expect(readFileSync(configFile, 'utf8')).toBe(stored);
      expect((await c.mounts()).has('/data')).toBe(false);
    } finally {
      await stop(c);
    }
  }, 60_000);

  test('without nsenter, mount and umount on PATH: ERR_ATTACH_HELPER_MISSING naming util-linux, nothing changed', async () => {
    const { runtime, rootfs, root } = await world();
    const fsRoot = await rootfs('no-helper');
    const app = await runtime.create({ rootfs: fsRoot, volumes: ['/data'] });
    const c = await runcStart(fsRoot, []);
    const configFile = path.join(root, 'containers', `${app.id}.json`);
    const stored = readFileSync(configFile, 'utf8');
    const emptyBin = await fs.mkdtemp(path.join(base, 'bin-'));
    const savedPath = process.env.PATH;
    try {
      process.env.PATH = emptyBin;
      await expect(runtime.attach(app.id, { pid: c.pid })).rejects.toMatchObject({
        code: 'ERR_ATTACH_HELPER_MISSING',
        message: expect.stringMatching(/util-linux.*nsenter, mount, umount/),
      });
    } finally {
      process.env.PATH = savedPath;
    }
    try {
      expect(readFileSync(configFile, 'utf8')).toBe(stored);
      expect((await c.mounts()).has('/data')).toBe(false);
    } finally {
      await stop(c);
    }
  }, 60_000);

  test('a volume left under a mount made over it stays attached: detach keeps the attachment, the container is not removed', async () => {
    const { runtime, rootfs } = await world();
    const fsRoot = await rootfs('covered');
    const app = await runtime.create({ rootfs: fsRoot, volumes: ['/data'] });
    const c = await runcStart(fsRoot, []);
    try {
      await runtime.attach(app.id, { pid: c.pid });
      await execa('nsenter', [`--mount=/proc/${c.pid}/ns/mnt`, '--', '/bin/mount', '-t', 'tmpfs', 'tmpfs', '/data']);
      expect(await runtime.detach(app.id, { pid: c.pid })).toMatchObject({ detached: [], container: { attachedTo: [{ pid: c.pid }] } });
      await expect(runtime.remove(app.id)).rejects.toMatchObject({ code: 'ERR_CONTAINER_ATTACHED' });
      await execa('nsenter', [`--mount=/proc/${c.pid}/ns/mnt`, '--', '/bin/umount', '/data']);
      const out = await runtime.detach(app.id, { pid: c.pid });
      expect(out.detached).toEqual(['/data']);
      expect(out.container.attachedTo).toBeUndefined();
      await runtime.remove(app.id, { volumes: true });
    } finally {
      await stop(c);
    }
  }, 60_000);

  test('the volume there already but not as asked (rw for ro, plain for an idmapped container) is refused, not left alone', async () => {
    const { runtime, rootfs, root, volumeDir } = await world();
    const fsRoot = await rootfs('unlike');
    const range = [{ containerID: 0, hostID: 100000, size: 65536 }];
    const app = await runtime.create({ rootfs: fsRoot, volumes: ['/data'], idmap: { uidMappings: range, gidMappings: range } });
    const ro = await runtime.create({ rootfs: fsRoot, volumesFrom: [`${app.id}:ro`] });
    // runc mounts it as a container without the mapping would have it: plain, read-write.
    const { idmap: _, ...plain } = app;
    const c = await runcStart(fsRoot, [{ destination: '/data', type: 'bind', source: volumeDir(plain.volumes[0]!.volumeId), options: ['bind', 'rw', 'nosuid', 'nodev', 'rprivate'] }]);
    const stored = readFileSync(path.join(root, 'containers', `${app.id}.json`), 'utf8');
    try {
      await expect(runtime.attach(app.id, { pid: c.pid })).rejects.toMatchObject({ code: 'ERR_MOUNT_POINT_IN_USE', message: expect.stringMatching(/without idmapped/) });
      await expect(runtime.attach(ro.id, { pid: c.pid })).rejects.toMatchObject({ code: 'ERR_MOUNT_POINT_IN_USE', message: expect.stringMatching(/without ro/) });
      expect(readFileSync(path.join(root, 'containers', `${app.id}.json`), 'utf8')).toBe(stored);
      expect((await c.mounts()).get('/data')).not.toContain('idmapped');
      // Detached first, it is attached as asked.
      expect((await runtime.detach(app.id, { pid: c.pid })).detached).toEqual(['/data']);
      expect((await runtime.attach(app.id, { pid: c.pid })).attached).toEqual(['/data']);
      expect((await c.mounts()).get('/data')).toContain('idmapped');
      await runtime.detach(app.id, { pid: c.pid });
    } finally {
      await stop(c);
    }
  }, 60_000);

  test('recover() forgets an attachment whose process is gone; the container can then be removed', async () => {
    const { runtime, rootfs } = await world();
    const fsRoot = await rootfs('gone');
    const app = await runtime.create({ rootfs: fsRoot, volumes: ['/data'] });
    const c = await runcStart(fsRoot, []);
    await runtime.attach(app.id, { pid: c.pid });
    await stop(c);
    expect((await runtime.get(app.id)).attachedTo).toEqual([{ pid: c.pid }]);
    expect(await runtime.recover()).toMatchObject({ attachmentsGone: [app.id] });
    expect((await runtime.get(app.id)).attachedTo).toBeUndefined();
    expect((await runtime.recover()).attachmentsGone).toEqual([]);
    await runtime.remove(app.id, { volumes: true });
  }, 60_000);

  test('a process that moves to another mount namespace between the record and the mount: ERR_PROCESS_CHANGED, nothing mounted, nothing recorded', async () => {
    const bind = new BindMounter({ engine: 'kernel' });
    let beforeAttach: (() => Promise<void>) | undefined;
    // Delegates to BindMounter, letting the process move just before the mounter opens it.
    const mounter: Mounter = {
      mount: (r) => bind.mount(r),
      unmount: (t) => bind.unmount(t),
      list: (d) => bind.list(d),
      async attachAll(pid: number, requests: readonly AttachRequest[], namespace?: string) {
        await beforeAttach?.();
        return bind.attachAll(pid, requests, namespace);
      },
      detachAll: (pid: number, targets: readonly AttachTarget[], namespace?: string) => bind.detachAll(pid, targets, namespace),
    };
    const { runtime, root, rootfs, volumeDir } = await world(mounter);
    const fsRoot = await rootfs('moving');
    const app = await runtime.create({ rootfs: fsRoot, volumes: ['/data'] });
    await fs.writeFile(path.join(volumeDir(app.volumes[0]!.volumeId), 'precious'), 'x');
    const nsOf = (pid: number) => readlinkSync(`/proc/${pid}/ns/mnt`);
    const ours = nsOf(process.pid);
    const p = execa('unshare', ['-m', '--propagation', 'private', '--', 'sh', '-c', 'read x; exec unshare -m --propagation private chroot "$0" /bin/sleep 1000', fsRoot], {
      stdin: 'pipe',
      reject: false,
    });
    const until = async (ok: () => boolean) => {
      for (let i = 0; i < 500 && !ok(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
    };
    await until(() => existsSync(`/proc/${p.pid}`) && nsOf(p.pid as number) !== ours);
    const first = nsOf(p.pid as number);
    beforeAttach = async () => {
      p.stdin?.write('\n');
      await until(() => nsOf(p.pid as number) !== first && readlinkSync(`/proc/${p.pid}/root`) === fsRoot);
    };
    const stored = readFileSync(path.join(root, 'containers', `${app.id}.json`), 'utf8');
    try {
      const error = await runtime.attach(app.id, { pid: p.pid as number }).catch((e: Error & { code: string }) => e);
      expect(error).toMatchObject({ code: 'ERR_PROCESS_CHANGED', message: expect.stringContaining(first) });
      expect(readFileSync(path.join(root, 'containers', `${app.id}.json`), 'utf8')).toBe(stored);
      const seen = await execa('nsenter', ['-t', String(p.pid), '-m', '-r', '--', '/bin/ls', '-a', '/data'], { reject: false });
      expect(seen.stdout).not.toContain('precious');
      expect(readFileSync(`/proc/${p.pid}/mountinfo`, 'utf8').split('\n').some((l) => l.split(' ')[4] === '/data')).toBe(false);
    } finally {
      p.kill('SIGKILL');
      await p;
    }
  }, 60_000);
});

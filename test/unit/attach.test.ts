import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa, type ResultPromise } from 'execa';
import { readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ContainerRuntime, FakeMounter } from '../../src/index.js';
import { cleanupTemp, expectCode, sandbox, snapshotTree, withoutNamespaceRegistry } from '../helpers/fixtures.js';

// The operation's rules with FakeMounter: the process given must be a live one in another
// mount namespace, so one is started (a user namespace lets it run without root).

let holder: ResultPromise;
let pid: number;

beforeAll(async () => {
  holder = execa('unshare', ['--user', '--map-root-user', '--mount', '--', 'sleep', '600'], { stdio: 'ignore', reject: false });
  pid = holder.pid as number;
  const ours = readlinkSync('/proc/self/ns/mnt');
  for (let i = 0; i < 200 && readlinkSync(`/proc/${pid}/ns/mnt`) === ours; i++) await sleep(10);
});

afterAll(async () => {
  holder.kill('SIGKILL');
  await holder;
  await cleanupTemp();
});

async function setup() {
  const mounter = new FakeMounter();
  const box = await sandbox(mounter);
  const app = await box.runtime.create({ rootfs: await box.rootfs('app'), volumes: ['/data', '/data/cache', '/logs'] });
  const source = (p: string) => path.join(box.root, 'volumes', app.volumes.find((v) => v.path === p)!.volumeId);
  mounter.clearCalls();
  return { ...box, mounter, app, source };
}

const ops = (mounter: FakeMounter) => mounter.calls.filter((c) => c.op === 'attach' || c.op === 'detach').map((c) => `${c.op} ${'path' in c ? c.path : ''}`);

describe('attach and detach', () => {
  test('attach mounts every missing volume parents first, records the process, and leaves what is there alone', async () => {
    const { runtime, mounter, app, source } = await setup();
    const first = await runtime.attach(app.id, { pid });
    expect(first).toEqual({ container: { ...app, attachedTo: [{ pid }] }, attached: ['/data', '/logs', '/data/cache'], present: [] });
    expect(ops(mounter)).toEqual(['attach /data', 'attach /logs', 'attach /data/cache']);
    expect(mounter.attachedIn(pid)).toEqual([
      { path: '/data', mode: 'rw', source: source('/data') },
      { path: '/logs', mode: 'rw', source: source('/logs') },
      { path: '/data/cache', mode: 'rw', source: source('/data/cache') },
    ]);
    mounter.clearCalls();
    expect(await runtime.attach(app.id, { pid })).toMatchObject({ attached: [], present: ['/data', '/logs', '/data/cache'] });
    expect(ops(mounter)).toEqual([]);
    expect((await runtime.get(app.id)).attachedTo).toEqual([{ pid }]);
  });

  test('a volume below one that is missing is mounted again on top of it', async () => {
    const { runtime, mounter, app, source } = await setup();
    await runtime.attach(app.id, { pid });
    await mounter.detachAll(pid, [{ source: source('/data'), path: '/data' }]);
    mounter.clearCalls();
    expect((await runtime.attach(app.id, { pid })).attached).toEqual(['/data', '/data/cache']);
  });

  test('volumes added and shared :ro while it runs are attached with their modes', async () => {
    const { runtime, mounter, app, rootfs } = await setup();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/db'] });
    await runtime.attach(app.id, { pid });
    await runtime.createVolumes(app.id, ['/tmp/new']);
    await runtime.shareVolumesFrom(app.id, db.id, { mode: 'ro' });
    mounter.clearCalls();
    expect((await runtime.attach(app.id, { pid })).attached).toEqual(['/db', '/tmp/new']);
    expect(mounter.attachedIn(pid).filter((m) => m.path === '/db' || m.path === '/tmp/new').map((m) => m.mode)).toEqual(['ro', 'rw']);
  });

  test('a path where another mount is refuses the call: nothing attached, the store as it was', async () => {
    const { runtime, mounter, app, root } = await setup();
    await mounter.attachAll(pid, [{ source: '/elsewhere', path: '/logs', mode: 'rw' }]);
    const before = await snapshotTree(root);
    await expectCode(runtime.attach(app.id, { pid }), 'ERR_MOUNT_POINT_IN_USE');
    expect(mounter.attachedIn(pid).map((m) => m.path)).toEqual(['/logs']);
    expect(withoutNamespaceRegistry(await snapshotTree(root))).toEqual(withoutNamespaceRegistry(before));
  });

  test('the volume there already in another mode, or not idmapped for a container with a mapping, refuses the call', async () => {
    const { runtime, mounter, app, root, source, rootfs } = await setup();
    await mounter.attachAll(pid, [{ source: source('/logs'), path: '/logs', mode: 'ro' }]);
    await expectCode(runtime.attach(app.id, { pid }), 'ERR_MOUNT_POINT_IN_USE');
    const range = [{ containerID: 0, hostID: 100000, size: 65536 }];
    const mapped = await runtime.create({ rootfs: await rootfs('mapped'), volumes: ['/m'], idmap: { uidMappings: range, gidMappings: range } });
    const m = path.join(root, 'volumes', mapped.volumes[0]!.volumeId);
    await mounter.attachAll(pid, [{ source: m, path: '/m', mode: 'rw' }]);
    await expectCode(runtime.attach(mapped.id, { pid }), 'ERR_MOUNT_POINT_IN_USE');
    expect(mounter.attachedIn(pid).map((v) => v.path)).toEqual(['/logs', '/m']);
    expect((await runtime.get(app.id)).attachedTo).toBeUndefined();
    expect((await runtime.get(mapped.id)).attachedTo).toBeUndefined();
  });

  test('if one volume fails, those attached by the call are taken out again, and the store is as it was', async () => {
    const { runtime, mounter, app, root } = await setup();
    const before = await snapshotTree(root);
    mounter.failOn({ op: 'attach', path: '/data/cache' });
    const error = await expectCode(runtime.attach(app.id, { pid }), 'ERR_MOUNT_FAILED');
    expect(error.message).toMatch(/\/data\/cache/);
    expect(mounter.attachedIn(pid)).toEqual([]);
    expect(withoutNamespaceRegistry(await snapshotTree(root))).toEqual(withoutNamespaceRegistry(before));
    expect((await runtime.get(app.id)).attachedTo).toBeUndefined();
  });

  test('detach takes out the volumes given, children first, idempotently; all out forgets the attachment', async () => {
    const { runtime, mounter, app } = await setup();
    await runtime.attach(app.id, { pid });
    mounter.clearCalls();
    expect((await runtime.detach(app.id, { pid, paths: ['/data/cache', '/data'] })).detached).toEqual(['/data/cache', '/data']);
    expect(await runtime.detach(app.id, { pid, paths: ['/data'] })).toMatchObject({ detached: [], container: { attachedTo: [{ pid }] } });
    const all = await runtime.detach(app.id, { pid });
    expect(all.detached).toEqual(['/logs']);
    expect(all.container.attachedTo).toBeUndefined();
    expect(ops(mounter)).toEqual(['detach /data/cache', 'detach /data', 'detach /logs']);
    expect((await runtime.detach(app.id, { pid })).detached).toEqual([]);
  });

  test('detach leaves a mount that is not the volume', async () => {
    const { runtime, mounter, app } = await setup();
    await mounter.attachAll(pid, [{ source: '/elsewhere', path: '/logs', mode: 'rw' }]);
    expect((await runtime.detach(app.id, { pid })).detached).toEqual([]);
    expect(mounter.attachedIn(pid).map((m) => m.source)).toEqual(['/elsewhere']);
  });
});

describe('in use while attached', () => {
  test('the container cannot be removed, even with force, and its volumes cannot be deleted; detached, both can', async () => {
    const { runtime, app, root } = await setup();
    await runtime.attach(app.id, { pid });
    const before = await snapshotTree(root);
    for (const options of [undefined, { force: true }, { volumes: true }, { force: true, volumes: true }]) {
      const error = await expectCode(runtime.remove(app.id, options), 'ERR_CONTAINER_ATTACHED');
      expect(error.message).toMatch(new RegExp(`${app.id}.*process ${pid}`));
    }
    await expectCode(runtime.volumes.remove(app.volumes[0]!.volumeId), 'ERR_VOLUME_IN_USE');
    expect(await runtime.volumes.prune()).toEqual({ removed: [] });
    expect(withoutNamespaceRegistry(await snapshotTree(root))).toEqual(withoutNamespaceRegistry(before));
    await runtime.detach(app.id, { pid });
    await runtime.remove(app.id, { volumes: true });
    expect(await runtime.volumes.list()).toEqual([]);
  });

  test('recover() forgets an attachment whose process is gone', async () => {
    const { runtime, app } = await setup();
    const other = execa('unshare', ['--user', '--map-root-user', '--mount', '--', 'sleep', '600'], { stdio: 'ignore', reject: false });
    const ours = readlinkSync('/proc/self/ns/mnt');
    for (let i = 0; i < 200 && readlinkSync(`/proc/${other.pid}/ns/mnt`) === ours; i++) await sleep(10);
    await runtime.attach(app.id, { pid: other.pid! });
    await runtime.attach(app.id, { pid });
    expect((await runtime.recover()).attachmentsGone).toEqual([]);
    other.kill('SIGKILL');
    await other;
    expect((await runtime.recover()).attachmentsGone).toEqual([app.id]);
    expect((await runtime.get(app.id)).attachedTo).toEqual([{ pid }]);
    await expectCode(runtime.remove(app.id), 'ERR_CONTAINER_ATTACHED');
  });
});

describe('refusals', () => {
  test('bad options, gone processes, our own namespace: coded, nothing changed', async () => {
    const { runtime, mounter, app, root } = await setup();
    const before = await snapshotTree(root);
    for (const method of ['attach', 'detach'] as const) {
      const call = (options: unknown) => runtime[method](app.id, options as never);
      await expectCode(call(undefined), 'ERR_INVALID_ARGUMENT');
      await expectCode(call(null), 'ERR_INVALID_ARGUMENT');
      await expectCode(call({}), 'ERR_INVALID_ARGUMENT');
      await expectCode(call({ pid, extra: 1 }), 'ERR_INVALID_ARGUMENT');
      for (const bad of [0, -1, 1.5, NaN, '1', null, 2 ** 53]) await expectCode(call({ pid: bad }), 'ERR_INVALID_ARGUMENT');
      const gone = execa('true');
      await gone;
      await expectCode(call({ pid: gone.pid }), 'ERR_PROCESS_NOT_FOUND');
      await expectCode(call({ pid: process.pid }), 'ERR_ATTACH_OWN_NAMESPACE');
      await expectCode(runtime[method]('nonexistent', { pid }), 'ERR_CONTAINER_NOT_FOUND');
    }
    await expectCode(runtime.detach(app.id, { pid, paths: '/data' as never }), 'ERR_INVALID_ARGUMENT');
    await expectCode(runtime.detach(app.id, { pid, paths: ['relative'] }), 'ERR_INVALID_VOLUME_PATH');
    await expectCode(runtime.detach(app.id, { pid, paths: ['/not-a-volume'] }), 'ERR_INVALID_VOLUME_PATH');
    expect(ops(mounter)).toEqual([]);
    expect(withoutNamespaceRegistry(await snapshotTree(root))).toEqual(withoutNamespaceRegistry(before));
  });

  test('a mounter without attach, a mounted container, a handler container', async () => {
    const { runtime, mounter, app, root, rootfs } = await setup();
    const plain = new ContainerRuntime({ root, mounter: { mount: mounter.mount.bind(mounter), unmount: mounter.unmount.bind(mounter), list: mounter.list.bind(mounter) } });
    await expectCode(plain.attach(app.id, { pid }), 'ERR_ATTACH_UNSUPPORTED');
    await expectCode(plain.detach(app.id, { pid }), 'ERR_ATTACH_UNSUPPORTED');
    const mounted = await runtime.create({ rootfs: await rootfs('mounted'), volumes: ['/m'] });
    await runtime.mount(mounted.id);
    await expectCode(runtime.attach(mounted.id, { pid }), 'ERR_CONTAINER_MOUNTED');
    await runtime.runHandler(app.id, async () => {
      const [handler] = (await runtime.list()).filter((c) => c.handler);
      await expectCode(runtime.attach(handler!.id, { pid }), 'ERR_HANDLER_RUNNING');
    });
    expect(mounter.attachedIn(pid)).toEqual([]);
  });

  test('FakeMounter.attachAll / detachAll check their input', async () => {
    const mounter = new FakeMounter();
    const ok = { source: '/v', path: '/p', mode: 'rw' as const };
    await expectCode(mounter.attachAll(0, [ok]), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.attachAll(1.5, [ok]), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.attachAll(pid, ok as never), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.attachAll(pid, [null as never]), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.attachAll(pid, [{ ...ok, path: 'p' }]), 'ERR_INVALID_VOLUME_PATH');
    await expectCode(mounter.attachAll(pid, [{ ...ok, path: '/p/../q' }]), 'ERR_INVALID_VOLUME_PATH');
    await expectCode(mounter.attachAll(pid, [{ ...ok, source: 'v' }]), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.attachAll(pid, [{ ...ok, mode: 'rx' as never }]), 'ERR_INVALID_MODE');
    await expectCode(mounter.attachAll(pid, [{ source: '/v', path: '/p' } as never]), 'ERR_INVALID_MODE');
    await expectCode(mounter.detachAll(-3, [ok]), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.detachAll(pid, [{ source: '/v', path: '/p/' }]), 'ERR_INVALID_VOLUME_PATH');
    expect(mounter.calls).toEqual([]);
    expect(mounter.attachedIn(pid)).toEqual([]);
  });
});

describe('attach of a container with a user-namespace mapping', () => {
  const idmap = { uidMappings: [{ containerID: 0, hostID: 100000, size: 65536 }], gidMappings: [{ containerID: 0, hostID: 100000, size: 65536 }] };

  test('each volume is attached idmapped with the container\'s mapping', async () => {
    const mounter = new FakeMounter();
    const { runtime, rootfs } = await sandbox(mounter);
    const app = await runtime.create({ rootfs: await rootfs('app'), volumes: ['/data', '/data/cache'], idmap });
    await runtime.attach(app.id, { pid });
    expect(mounter.calls.filter((c) => c.op === 'attach').map((c) => ['path' in c && c.path, 'idmap' in c && c.idmap])).toEqual([
      ['/data', idmap],
      ['/data/cache', idmap],
    ]);
  });

  test('a mounter that does not declare supportsIdmap is refused before anything is attached or written', async () => {
    const mounter = new FakeMounter({ supportsIdmap: false });
    const { runtime, rootfs, root } = await sandbox(mounter);
    const app = await runtime.create({ rootfs: await rootfs('app'), volumes: ['/data'], idmap });
    const before = await snapshotTree(root);
    const error = await expectCode(runtime.attach(app.id, { pid }), 'ERR_IDMAP_UNSUPPORTED');
    expect(error.message).toContain(app.id);
    expect(mounter.attachedIn(pid)).toEqual([]);
    expect(await snapshotTree(root)).toEqual(before);
  });

  test('attachAll refuses a malformed mapping in a request', async () => {
    const mounter = new FakeMounter();
    const bad = { uidMappings: [{ containerID: 0, hostID: 100000, size: 0 }], gidMappings: idmap.gidMappings };
    await expectCode(mounter.attachAll(pid, [{ source: '/v', path: '/data', mode: 'rw', idmap: bad }]), 'ERR_INVALID_ARGUMENT');
    expect(mounter.attachedIn(pid)).toEqual([]);
  });
});

test('attachAll and detachAll refuse a namespace that is not mnt:[<inode>], before anything is made', async () => {
  const mounter = new FakeMounter();
  for (const namespace of ['', 'mnt:[0]', 'net:[4026531840]', 'mnt:[12', 42]) {
    await expectCode(mounter.attachAll(pid, [{ source: '/v', path: '/data', mode: 'rw' }], namespace as string), 'ERR_INVALID_ARGUMENT');
    await expectCode(mounter.detachAll(pid, [{ source: '/v', path: '/data' }], namespace as string), 'ERR_INVALID_ARGUMENT');
  }
  expect(mounter.attachedIn(pid)).toEqual([]);
  expect(mounter.calls).toEqual([]);
});

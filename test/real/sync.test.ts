import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import type { ContainerInfo, Progress } from '../../src/index.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { realWorld } from '../helpers/real-world.js';
import { describeTree, populateTree } from '../helpers/tree.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * sync to a local directory (the remote form is test/real/two-hosts.test.ts): the tree
 * it writes, what a second run transfers, restore of the tree, and bad input.
 */

jest.setTimeout(120_000);

const MiB = 1024 * 1024;
const MANIFEST = 'container-volumes-backup.json';
let base: string;

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('sync-');
});

afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

async function dbWorld() {
  const w = realWorld(base);
  const db = await w.runtime.create({ rootfs: w.rootfs('db'), volumes: ['/data', '/data/nested', '/var/log'] });
  const at = (container: ContainerInfo, p: string) => w.volumeDir(container.volumes.find((v) => v.path === p)!.volumeId);
  populateTree(at(db, '/data'));
  await fsp.writeFile(path.join(at(db, '/data/nested'), 'inner'), 'nested\n');
  await fsp.writeFile(path.join(at(db, '/var/log'), 'big.log'), randomBytes(2 * MiB));
  return { ...w, db, at };
}
type World = Awaited<ReturnType<typeof dbWorld>>;

const volumesOf = (w: World, c: ContainerInfo) => ({
  '/data': describeTree(w.at(c, '/data'), { skip: ['nested'] }),
  '/data/nested': describeTree(w.at(c, '/data/nested')),
  '/var/log': describeTree(w.at(c, '/var/log')),
});

async function expectOnly(w: World, containerIds: readonly string[]): Promise<void> {
  const containers = await w.runtime.list();
  expect(containers.map((c) => c.id).sort()).toEqual([...containerIds].sort());
  const volumeIds = new Set(containers.flatMap((c) => c.volumes.map((v) => v.volumeId)));
  expect((await fsp.readdir(path.join(w.root, 'volumes'))).sort()).toEqual([...volumeIds].sort());
  expect(mountsUnder(w.dir)).toEqual([]);
}

describe('sync to a local directory', () => {
  test('writes <destination>/<container path>/… and the manifest; restore of it gives the volumes back file by file', async () => {
    const w = await dbWorld();
    const mirror = path.join(w.dir, 'mirror');
    const progress: Progress[] = [];
    const result = await w.runtime.sync(w.db.id, mirror, { onProgress: (p) => progress.push(p) });
    expect(result).toMatchObject({ format: 'container-volumes-backup', containerId: w.db.id, destination: mirror, warnings: [] });
    expect(result.filesTransferred).toBeGreaterThan(8);
    expect(result.totalFileSize).toBeGreaterThan(2 * MiB);
    expect(fs.readdirSync(mirror).sort()).toEqual([MANIFEST, 'data', 'var']);
    expect(JSON.parse(fs.readFileSync(path.join(mirror, MANIFEST), 'utf8'))).toMatchObject({ containerId: w.db.id });
    expect(fs.readFileSync(path.join(mirror, 'data/nested/inner'), 'utf8')).toBe('nested\n');
    expect(describeTree(path.join(mirror, 'data'), { skip: ['nested'] })).toEqual(volumesOf(w, w.db)['/data']);
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.at(-1)!.bytesDone).toBe(progress.at(-1)!.bytesTotal);
    const restored = await w.runtime.restore(mirror, { rootfs: w.rootfs('restored') });
    expect(volumesOf(w, restored)).toEqual(volumesOf(w, w.db));
    await expectOnly(w, [w.db.id, restored.id]);
  });

  test('a second sync sends only what changed, and deletes what is gone', async () => {
    const w = await dbWorld();
    const mirror = path.join(w.dir, 'mirror');
    await w.runtime.sync(w.db.id, mirror);
    const unchanged = await w.runtime.sync(w.db.id, mirror);
    expect(unchanged.filesTransferred).toBe(0);
    await fsp.rm(path.join(w.at(w.db, '/data'), 'private'));
    await fsp.appendFile(path.join(w.at(w.db, '/var/log'), 'big.log'), 'one more line\n');
    const changed = await w.runtime.sync(w.db.id, mirror);
    expect(changed.filesTransferred).toBe(1);
    // The file that is gone, and the last manifest (written again at the end).
    expect(changed.filesDeleted).toBe(2);
    expect(fs.existsSync(path.join(mirror, 'data/private'))).toBe(false);
    const restored = await w.runtime.restore(mirror, { rootfs: w.rootfs('restored') });
    expect(volumesOf(w, restored)).toEqual(volumesOf(w, w.db));
  });

  test('aborted: ERR_HANDLER_ABORTED, no handler container, and the destination holds no manifest (restore refuses it)', async () => {
    const w = await dbWorld();
    await fsp.writeFile(path.join(w.at(w.db, '/var/log'), 'huge'), randomBytes(64 * MiB));
    const mirror = path.join(w.dir, 'mirror');
    const controller = new AbortController();
    await expectCode(w.runtime.sync(w.db.id, mirror, { signal: controller.signal, onProgress: () => controller.abort() }), 'ERR_HANDLER_ABORTED');
    expect(fs.existsSync(path.join(mirror, MANIFEST))).toBe(false);
    await expectCode(w.runtime.restore(mirror, { rootfs: w.rootfs('restored') }), 'ERR_INVALID_ARCHIVE');
    await expectOnly(w, [w.db.id]);
  });
});

describe('restore of a directory that is no complete sync destination: ERR_INVALID_ARCHIVE, nothing created', () => {
  const cases: [string, (w: World, dir: string) => Promise<void>][] = [
    ['no manifest', async (_w, dir) => fsp.rm(path.join(dir, MANIFEST))],
    ['a manifest that is not JSON', async (_w, dir) => fsp.writeFile(path.join(dir, MANIFEST), '{')],
    ['a manifest that is a directory', async (_w, dir) => {
      await fsp.rm(path.join(dir, MANIFEST));
      await fsp.mkdir(path.join(dir, MANIFEST));
    }],
    ['a volume path that is a symlink out of the tree', async (w, dir) => {
      await fsp.rm(path.join(dir, 'var'), { recursive: true });
      await fsp.symlink(w.dir, path.join(dir, 'var'));
    }],
  ];
  test.each(cases)('%s', async (_name, damage) => {
    const w = await dbWorld();
    const mirror = path.join(w.dir, 'mirror');
    await w.runtime.sync(w.db.id, mirror);
    await damage(w, mirror);
    const before = await snapshotTree(w.root);
    await expectCode(w.runtime.restore(mirror, { rootfs: w.rootfs('restored') }), 'ERR_INVALID_ARCHIVE');
    expect(await snapshotTree(w.root)).toEqual(before);
    await expectOnly(w, [w.db.id]);
  });
});

describe('bad input to sync: a coded error, nothing changed', () => {
  const anySync = (w: World) => w.runtime.sync.bind(w.runtime) as unknown as (...args: unknown[]) => Promise<unknown>;
  const cases: [string, string, (w: World) => Promise<unknown>][] = [
    ['a relative destination', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'mirror')],
    ['destination /', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, '/')],
    ['a destination that is not a string', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 42)],
    ['a destination with NUL', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, `${w.dir}/m\0x`)],
    ["rsync's daemon syntax host::module", 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'backup::volumes')],
    ['a remote relative path', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'root@b:mirror')],
    ['a host ssh would take for an option', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, '-oProxyCommand=touch:/tmp/x')],
    ['a user ssh would take for an option', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, '-oProxyCommand=x@b:/tmp/x')],
    ['a destination inside the store', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, path.join(w.root, 'mirror'))],
    ['a destination holding the store', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, w.dir)],
    ['a destination whose parent is missing', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, path.join(w.dir, 'no', 'mirror'))],
    ['a destination that is a file', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, path.join(w.dir, 'file'))],
    ['ssh not an array', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'root@b:/m', { ssh: '-p 2222' })],
    ['an ssh argument with a space', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'root@b:/m', { ssh: ['-i', '/keys/my key'] })],
    ['an ssh argument with a quote', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'root@b:/m', { ssh: ["-oProxyCommand='sh'"] })],
    ['an ssh argument that is not a string', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, 'root@b:/m', { ssh: ['-p', 2222] })],
    ['an unknown option', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, path.join(w.dir, 'm'), { delete: false })],
    ['onProgress not a function', 'ERR_INVALID_ARGUMENT', (w) => anySync(w)(w.db.id, path.join(w.dir, 'm'), { onProgress: 1 })],
    ['an unknown container', 'ERR_CONTAINER_NOT_FOUND', (w) => anySync(w)('db', path.join(w.dir, 'm'))],
    ['a container with a volume where the manifest goes', 'ERR_INVALID_ARGUMENT', async (w) => {
      const odd = await w.runtime.create({ rootfs: w.rootfs('odd'), volumes: [`/${MANIFEST}`] });
      return anySync(w)(odd.id, path.join(w.dir, 'm'));
    }],
  ];
  test.each(cases)('%s: %s', async (_name, code, call) => {
    const w = await dbWorld();
    await fsp.writeFile(path.join(w.dir, 'file'), '');
    const before = await snapshotTree(w.dir);
    const ids = (await w.runtime.list()).map((c) => c.id);
    await expectCode(call(w), code);
    expect(fs.existsSync(path.join(w.dir, 'm'))).toBe(false);
    if (ids.length === (await w.runtime.list()).length) expect(await snapshotTree(w.dir)).toEqual(before);
    await expectOnly(w, (await w.runtime.list()).map((c) => c.id));
  });
});

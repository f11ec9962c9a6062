import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, type Mode } from '../../src/index.js';
import { cleanupTemp, expectCode, NOTHING_RECOVERED as NOTHING, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { realWorld } from '../helpers/real-world.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * recover() (issue 4, item 1) with real bind mounts: each case damages a store the way
 * a crash, a reboot or a half-finished operation would, then checks both what recover()
 * reports and what is really there afterwards (mountinfo, files, configurations), and
 * that a second recover() finds nothing left to do.
 */

const BOOT_ID = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('recover-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

const world = () => realWorld(base);

/** [mount point relative to `dir`, mounted directory (the host path: the store is on the root file system), ro|rw]. */
function table(dir: string): [string, string, Mode][] {
  return mountsUnder(dir).map((m) => [path.relative(dir, m.mountPoint), m.root, m.options.includes('ro') ? 'ro' : 'rw']);
}

/** `table` in path order, for checks where the order in which mounts were made does not matter. */
function sortedTable(dir: string): [string, string, Mode][] {
  return table(dir).sort((a, b) => a[0].localeCompare(b[0]));
}

function volumeOf(info: { volumes: { path: string; volumeId: string }[] }, at: string): string {
  const found = info.volumes.find((v) => v.path === at);
  if (!found) throw new Error(`no volume at ${at}`);
  return found.volumeId;
}

/** Bind-mounts as a crashed process could have left it: straight through the mounter, no configuration changed. */
async function mountByHand(source: string, rootfs: string, at: string, mode: Mode): Promise<void> {
  await new BindMounter().mount({ source, rootfs, path: at, mode });
}

function umountByHand(mountPoint: string): void {
  execFileSync('umount', ['-l', mountPoint]);
}

async function expectNothingLeft(runtime: ContainerRuntime): Promise<void> {
  expect(await runtime.recover()).toEqual(NOTHING);
}

const byPath = (a: { containerId: string; path: string }, b: { containerId: string; path: string }) =>
  a.containerId.localeCompare(b.containerId) || a.path.localeCompare(b.path);

describe('recover() brings the mounts in line with the configurations', () => {
  test('mounts under the rootfs of a container meant to be unmounted are detached, deepest first; a foreign mount stays', async () => {
    const w = world();
    const c = await w.runtime.create({ rootfs: w.rootfs('c'), volumes: ['/srv', '/srv/cache', '/data'] });
    for (const at of ['/srv', '/srv/cache', '/data']) await mountByHand(w.volumeDir(volumeOf(c, at)), c.rootfs, at, 'rw');
    fs.mkdirSync(path.join(c.rootfs, 'foreign'));
    execFileSync('mount', ['-t', 'tmpfs', 'foreign', path.join(c.rootfs, 'foreign')]);
    expect(table(c.rootfs).map((t) => t[0])).toEqual(['srv', 'srv/cache', 'data', 'foreign']);

    const report = await w.restarted().recover();

    expect({ ...report, unmounted: [] }).toEqual(NOTHING);
    expect([...report.unmounted].sort(byPath)).toEqual(['/data', '/srv', '/srv/cache'].map((p) => ({ containerId: c.id, path: p })));
    const order = report.unmounted.map((u) => u.path);
    expect(order.indexOf('/srv/cache')).toBeLessThan(order.indexOf('/srv'));
    expect(table(c.rootfs)).toEqual([['foreign', '/', 'rw']]);
    expect((await w.runtime.get(c.id)).mounted).toBe(false);
    expect(fs.readdirSync(path.join(c.rootfs, 'srv'))).toEqual([]);
    await expectNothingLeft(w.restarted());
    umountByHand(path.join(c.rootfs, 'foreign'));
  });

  test('the missing mounts of containers meant to be mounted are made again: files visible, ro honoured', async () => {
    const w = world();
    const db = await w.runtime.create({ rootfs: w.rootfs('db'), volumes: ['/var/lib/db', '/var/log'] });
    const reader = await w.runtime.create({ rootfs: w.rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    await w.runtime.mount(db.id);
    await w.runtime.mount(reader.id);
    fs.writeFileSync(path.join(db.rootfs, 'var/lib/db/table'), 'rows\n');
    unmountAllUnder(w.dir);

    const report = await w.restarted().recover();

    expect({ ...report, remounted: [] }).toEqual(NOTHING);
    expect([...report.remounted].sort(byPath)).toEqual(
      [db.id, reader.id].flatMap((id) => ['/var/lib/db', '/var/log'].map((p) => ({ containerId: id, path: p }))).sort(byPath),
    );
    const dbData = w.volumeDir(volumeOf(db, '/var/lib/db'));
    const dbLog = w.volumeDir(volumeOf(db, '/var/log'));
    expect(table(w.dir)).toEqual([
      ['rootfs/db/var/log', dbLog, 'rw'],
      ['rootfs/db/var/lib/db', dbData, 'rw'],
      ['rootfs/reader/var/log', dbLog, 'ro'],
      ['rootfs/reader/var/lib/db', dbData, 'ro'],
    ]);
    expect(fs.readFileSync(path.join(reader.rootfs, 'var/lib/db/table'), 'utf8')).toBe('rows\n');
    expect(() => fs.writeFileSync(path.join(reader.rootfs, 'var/log/x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    fs.writeFileSync(path.join(db.rootfs, 'var/log/x'), 'x');
    expect(fs.readFileSync(path.join(dbLog, 'x'), 'utf8')).toBe('x');
    for (const m of mountsUnder(w.dir)) expect(m.options).toEqual(expect.arrayContaining(['nosuid', 'nodev']));

    // Only one mount gone: only that one is made again.
    umountByHand(path.join(reader.rootfs, 'var/log'));
    expect(await w.restarted().recover()).toEqual({ ...NOTHING, remounted: [{ containerId: reader.id, path: '/var/log' }] });
    expect(sortedTable(reader.rootfs)).toEqual([
      ['var/lib/db', dbData, 'ro'],
      ['var/log', dbLog, 'ro'],
    ]);
    expect((await w.runtime.list()).map((c) => c.mounted)).toEqual([true, true]);
    await expectNothingLeft(w.restarted());
  });

  test('the same volume stacked twice at one path: exactly one is left where it is meant to be mounted, none elsewhere', async () => {
    const w = world();
    const up = await w.runtime.create({ rootfs: w.rootfs('up'), volumes: ['/data'] });
    const down = await w.runtime.create({ rootfs: w.rootfs('down'), volumes: ['/data'] });
    await w.runtime.mount(up.id);
    const upData = w.volumeDir(volumeOf(up, '/data'));
    await mountByHand(upData, up.rootfs, '/data', 'rw');
    const downData = w.volumeDir(volumeOf(down, '/data'));
    await mountByHand(downData, down.rootfs, '/data', 'rw');
    await mountByHand(downData, down.rootfs, '/data', 'rw');
    expect(table(w.dir).map((t) => t[0])).toEqual(['rootfs/up/data', 'rootfs/up/data', 'rootfs/down/data', 'rootfs/down/data']);

    const report = await w.restarted().recover();

    expect({ ...report, unmounted: [], remounted: [] }).toEqual(NOTHING);
    expect(report.unmounted.filter((u) => u.containerId === down.id)).toEqual([
      { containerId: down.id, path: '/data' },
      { containerId: down.id, path: '/data' },
    ]);
    const upDetached = report.unmounted.filter((u) => u.containerId === up.id);
    expect(upDetached.length).toBeGreaterThanOrEqual(1);
    expect(upDetached.every((u) => u.path === '/data')).toBe(true);
    expect(report.unmounted).toHaveLength(upDetached.length + 2);
    expect(report.remounted.every((r) => r.containerId === up.id && r.path === '/data')).toBe(true);
    expect(table(w.dir)).toEqual([['rootfs/up/data', upData, 'rw']]);
    await expectNothingLeft(w.restarted());
  });

  test('a mount of the wrong mode is replaced: rw where the configuration says ro, and ro where it says rw', async () => {
    const w = world();
    const db = await w.runtime.create({ rootfs: w.rootfs('db'), volumes: ['/data'] });
    const reader = await w.runtime.create({ rootfs: w.rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    await w.runtime.mount(db.id);
    await w.runtime.mount(reader.id);
    const data = w.volumeDir(volumeOf(db, '/data'));
    umountByHand(path.join(reader.rootfs, 'data'));
    await mountByHand(data, reader.rootfs, '/data', 'rw');
    umountByHand(path.join(db.rootfs, 'data'));
    await mountByHand(data, db.rootfs, '/data', 'ro');
    expect(sortedTable(w.dir)).toEqual([
      ['rootfs/db/data', data, 'ro'],
      ['rootfs/reader/data', data, 'rw'],
    ]);

    const report = await w.restarted().recover();

    const both = [db.id, reader.id].map((id) => ({ containerId: id, path: '/data' })).sort(byPath);
    expect({ ...report, unmounted: [...report.unmounted].sort(byPath), remounted: [...report.remounted].sort(byPath) }).toEqual({
      ...NOTHING,
      unmounted: both,
      remounted: both,
    });
    expect(sortedTable(w.dir)).toEqual([
      ['rootfs/db/data', data, 'rw'],
      ['rootfs/reader/data', data, 'ro'],
    ]);
    expect(() => fs.writeFileSync(path.join(reader.rootfs, 'data/x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    fs.writeFileSync(path.join(db.rootfs, 'data/x'), 'x');
    await expectNothingLeft(w.restarted());
  });

  test('a mount bound but never remounted (a kill between the two steps): no nosuid,nodev, so it is replaced', async () => {
    const w = world();
    const db = await w.runtime.create({ rootfs: w.rootfs('db'), volumes: ['/data'] });
    const reader = await w.runtime.create({ rootfs: w.rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    await w.runtime.mount(db.id);
    await w.runtime.mount(reader.id);
    const data = w.volumeDir(volumeOf(db, '/data'));
    for (const rootfs of [db.rootfs, reader.rootfs]) {
      umountByHand(path.join(rootfs, 'data'));
      execFileSync('mount', ['--bind', data, path.join(rootfs, 'data')]);
    }
    expect(mountsUnder(w.dir).map((m) => m.options.includes('nosuid'))).toEqual([false, false]);

    const report = await w.restarted().recover();

    const both = [db.id, reader.id].map((id) => ({ containerId: id, path: '/data' })).sort(byPath);
    expect({ ...report, unmounted: [...report.unmounted].sort(byPath), remounted: [...report.remounted].sort(byPath) }).toEqual({
      ...NOTHING,
      unmounted: both,
      remounted: both,
    });
    expect(sortedTable(w.dir)).toEqual([
      ['rootfs/db/data', data, 'rw'],
      ['rootfs/reader/data', data, 'ro'],
    ]);
    for (const m of mountsUnder(w.dir)) expect(m.options).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
    await expectNothingLeft(w.restarted());
  });

  test('two containers on one rootfs: the mounts of the one meant to be mounted are not taken for strays of the other', async () => {
    const w = world();
    const rootfs = w.rootfs('shared');
    const up = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const down = await w.runtime.create({ rootfs, volumes: ['/logs'] });
    await w.runtime.mount(up.id);
    const mounts = table(rootfs);
    expect(mounts).toEqual([['data', w.volumeDir(volumeOf(up, '/data')), 'rw']]);

    expect(await w.restarted().recover()).toEqual(NOTHING);
    expect(table(rootfs)).toEqual(mounts);
    expect(await w.restarted().recover()).toEqual(NOTHING);
    expect(table(rootfs)).toEqual(mounts);
    expect((await w.runtime.get(down.id)).mounted).toBe(false);
  });

  test('two containers on one rootfs, both meant to be mounted, with a stray between them: settles in one call', async () => {
    const w = world();
    const rootfs = w.rootfs('shared');
    const a = await w.runtime.create({ rootfs, volumes: ['/data'] });
    const b = await w.runtime.create({ rootfs, volumes: ['/logs'] });
    const other = await w.runtime.create({ rootfs: w.rootfs('other'), volumes: ['/cache'] });
    await w.runtime.mount(a.id);
    await w.runtime.mount(b.id);
    await mountByHand(w.volumeDir(volumeOf(other, '/cache')), rootfs, '/cache', 'rw');

    const report = await w.restarted().recover();

    // A stray at a path none of them names is reported against one of the rootfs's containers.
    expect(report.unmounted.map((u) => u.path).sort()).toEqual(['/cache', '/data', '/logs']);
    expect(report.unmounted.filter((u) => u.path !== '/cache').sort(byPath)).toEqual(
      [{ containerId: a.id, path: '/data' }, { containerId: b.id, path: '/logs' }].sort(byPath),
    );
    expect([a.id, b.id]).toContain(report.unmounted.find((u) => u.path === '/cache')?.containerId);
    expect({ ...report, unmounted: [], remounted: [...report.remounted].sort(byPath) }).toEqual({
      ...NOTHING,
      remounted: [{ containerId: a.id, path: '/data' }, { containerId: b.id, path: '/logs' }].sort(byPath),
    });
    expect(sortedTable(rootfs)).toEqual([
      ['data', w.volumeDir(volumeOf(a, '/data')), 'rw'],
      ['logs', w.volumeDir(volumeOf(b, '/logs')), 'rw'],
    ]);
    expect(await w.restarted().recover()).toEqual(NOTHING);
  });

  test('a container that cannot be repaired (its rootfs is now a symlink) is reported in failed, and the others are still repaired', async () => {
    const w = world();
    const broken = await w.runtime.create({ rootfs: w.rootfs('broken'), volumes: ['/data'] });
    const fine = await w.runtime.create({ rootfs: w.rootfs('fine'), volumes: ['/data'] });
    await w.runtime.mount(broken.id);
    await w.runtime.mount(fine.id);
    umountByHand(path.join(broken.rootfs, 'data'));
    umountByHand(path.join(fine.rootfs, 'data'));
    fs.renameSync(broken.rootfs, `${broken.rootfs}.real`);
    fs.symlinkSync(`${broken.rootfs}.real`, broken.rootfs);

    const report = await w.restarted().recover();

    expect(report.failed).toEqual([{ containerId: broken.id, code: 'ERR_INVALID_ROOTFS', message: expect.stringContaining(broken.rootfs) }]);
    expect({ ...report, failed: [] }).toEqual({ ...NOTHING, remounted: [{ containerId: fine.id, path: '/data' }] });
    expect(table(fine.rootfs)).toEqual([['data', w.volumeDir(volumeOf(fine, '/data')), 'rw']]);
    expect(mountsUnder(`${broken.rootfs}.real`)).toEqual([]);
  });

  test('a bind left in the staging directory by a process that died before moving it into place is detached', async () => {
    const w = world();
    const c = await w.runtime.create({ rootfs: w.rootfs('c'), volumes: ['/data'] });
    await w.runtime.mount(c.id);
    // BindMounter's staging directory (src/mounter/bind.ts), where a bind for a rootfs on
    // a shared mount waits for its remount and move; each directory is named after its process.
    const staged = path.join('/run/container-volumes/staging', `${spawnSync('true').pid}-recover-test`);
    fs.mkdirSync(staged, { recursive: true });
    execFileSync('mount', ['--bind', w.volumeDir(volumeOf(c, '/data')), staged]);
    try {
      await w.restarted().recover();

      expect(mountsUnder(staged)).toEqual([]);
      expect(fs.existsSync(staged)).toBe(false);
      expect(table(c.rootfs)).toEqual([['data', w.volumeDir(volumeOf(c, '/data')), 'rw']]);
      await expectNothingLeft(w.restarted());
    } finally {
      // /run is the host's: leave nothing there, whatever happened.
      if (mountsUnder(staged).length > 0) umountByHand(staged);
      if (fs.existsSync(staged)) fs.rmdirSync(staged);
    }
  });

  test('a configuration meant to be mounted in another boot is marked unmounted and its mounts detached; one of this boot is kept', async () => {
    const w = world();
    const old = await w.runtime.create({ rootfs: w.rootfs('old'), volumes: ['/data', '/logs'] });
    const now = await w.runtime.create({ rootfs: w.rootfs('now'), volumes: ['/data'] });
    await w.runtime.mount(old.id);
    await w.runtime.mount(now.id);
    const otherBoot = randomUUID();
    w.editConfig(old.id, (config) => (config.mountedInBoot = otherBoot));

    const report = await w.restarted().recover();

    expect({ ...report, unmounted: [...report.unmounted].sort(byPath) }).toEqual({
      ...NOTHING,
      rebooted: [old.id],
      unmounted: ['/data', '/logs'].map((p) => ({ containerId: old.id, path: p })),
    });
    expect(table(old.rootfs)).toEqual([]);
    expect(table(now.rootfs)).toEqual([['data', w.volumeDir(volumeOf(now, '/data')), 'rw']]);
    expect((await w.runtime.get(old.id)).mounted).toBe(false);
    expect((await w.runtime.get(now.id)).mounted).toBe(true);
    const written = JSON.parse(fs.readFileSync(path.join(w.root, 'containers', `${old.id}.json`), 'utf8')) as Record<string, unknown>;
    expect(written.mounted).toBe(false);
    expect(written).not.toHaveProperty('mountedInBoot');
    for (const v of old.volumes) expect(fs.existsSync(w.volumeDir(v.volumeId))).toBe(true);
    await expectNothingLeft(w.restarted());
  });
});

describe('recover() cleans the store after an interrupted operation', () => {
  test('a create killed half-way: the volumes of its pending record that no configuration names are deleted with the record', async () => {
    const w = world();
    const kept = await w.runtime.create({ rootfs: w.rootfs('kept'), volumes: ['/data'] });
    // Killed after copy-up into the first volume, before the second directory was made.
    const made = randomUUID();
    const neverMade = randomUUID();
    fs.mkdirSync(w.volumeDir(made));
    fs.writeFileSync(path.join(w.volumeDir(made), 'copied-up'), 'half');
    fs.writeFileSync(path.join(w.root, 'pending', `${randomUUID()}.json`), `${JSON.stringify([made, neverMade])}\n`);
    // Left by `remove` without `volumes`: no record names it, so it is prune's to delete, not recover's.
    const orphan = await w.runtime.create({ rootfs: w.rootfs('orphan'), volumes: ['/data'] });
    await w.runtime.remove(orphan.id);

    const report = await w.restarted().recover();

    expect(report).toEqual({ ...NOTHING, removedVolumes: [made] });
    expect(fs.readdirSync(path.join(w.root, 'volumes')).sort()).toEqual([volumeOf(kept, '/data'), volumeOf(orphan, '/data')].sort());
    expect(fs.readdirSync(path.join(w.root, 'pending'))).toEqual([]);
    expect(fs.readdirSync(path.join(w.root, 'trash'))).toEqual([]);
    expect((await w.runtime.list()).map((c) => c.id)).toEqual([kept.id]);
    await expectNothingLeft(w.restarted());
  });

  test('a pending record whose volumes a configuration names deletes nothing; only the unnamed one of a createVolumes goes', async () => {
    const w = world();
    const c = await w.runtime.create({ rootfs: w.rootfs('c'), volumes: ['/data'] });
    const other = await w.runtime.create({ rootfs: w.rootfs('other'), volumes: ['/data'] });
    const named = volumeOf(c, '/data');
    const otherNamed = volumeOf(other, '/data');
    // Killed after the configuration was written, before its record was cleared.
    fs.writeFileSync(path.join(w.root, 'pending', `${c.id}.json`), `${JSON.stringify([named])}\n`);
    // A createVolumes on `other` killed after making the directory, before writing the configuration.
    const unnamed = randomUUID();
    fs.mkdirSync(w.volumeDir(unnamed));
    fs.writeFileSync(path.join(w.root, 'pending', `${other.id}.json`), `${JSON.stringify([unnamed, otherNamed])}\n`);
    fs.writeFileSync(path.join(w.volumeDir(named), 'data'), 'precious');

    const report = await w.restarted().recover();

    expect(report).toEqual({ ...NOTHING, removedVolumes: [unnamed] });
    expect(fs.readdirSync(path.join(w.root, 'volumes')).sort()).toEqual([named, otherNamed].sort());
    expect(fs.readFileSync(path.join(w.volumeDir(named), 'data'), 'utf8')).toBe('precious');
    expect(fs.readdirSync(path.join(w.root, 'pending'))).toEqual([]);
    expect((await w.runtime.get(c.id)).volumes).toEqual(c.volumes);
    expect((await w.runtime.get(other.id)).volumes).toEqual(other.volumes);
    await expectNothingLeft(w.restarted());
  });

  test('temporary files, trash and a half-built index are removed and reported; trash with a mount inside is kept', async () => {
    const w = world();
    const c = await w.runtime.create({ rootfs: w.rootfs('c'), volumes: ['/data'] });
    const tmpConfig = `.${c.id}.json.0a1b2c3d4e5f.tmp`;
    fs.writeFileSync(path.join(w.root, 'containers', tmpConfig), '{"half":');
    const tmpPending = `.${randomUUID()}.json.abcdef012345.tmp`;
    fs.writeFileSync(path.join(w.root, 'pending', tmpPending), '[');
    const trashed = `${randomUUID()}.1700000000000`;
    fs.mkdirSync(path.join(w.root, 'trash', trashed, 'deep'), { recursive: true });
    fs.writeFileSync(path.join(w.root, 'trash', trashed, 'deep', 'file'), 'x');
    fs.mkdirSync(path.join(w.root, 'index.new', 'refs'), { recursive: true });
    // Not ours: the names are not the store's, so they are left alone.
    fs.writeFileSync(path.join(w.root, 'containers', 'notes.txt'), 'mine');
    // Deleting this one would walk into the mount.
    const busy = `${randomUUID()}.1700000000001`;
    fs.mkdirSync(path.join(w.root, 'trash', busy, 'mnt'), { recursive: true });
    const outside = path.join(w.dir, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'host-file'), 'host data');
    execFileSync('mount', ['--bind', outside, path.join(w.root, 'trash', busy, 'mnt')]);

    const report = await w.restarted().recover();

    expect({ ...report, removedFiles: [...report.removedFiles].sort() }).toEqual({
      ...NOTHING,
      removedFiles: [`containers/${tmpConfig}`, 'index.new', `pending/${tmpPending}`, `trash/${trashed}`].sort(),
    });
    expect(fs.readdirSync(path.join(w.root, 'containers')).sort()).toEqual([`${c.id}.json`, 'notes.txt'].sort());
    expect(fs.readdirSync(path.join(w.root, 'pending'))).toEqual([]);
    expect(fs.readdirSync(path.join(w.root, 'trash'))).toEqual([busy]);
    expect(fs.existsSync(path.join(w.root, 'index.new'))).toBe(false);
    expect(fs.readFileSync(path.join(outside, 'host-file'), 'utf8')).toBe('host data');
    expect((await w.runtime.list()).map((x) => x.id)).toEqual([c.id]);
    await expectNothingLeft(w.restarted());

    umountByHand(path.join(w.root, 'trash', busy, 'mnt'));
    expect(await w.restarted().recover()).toEqual({ ...NOTHING, removedFiles: [`trash/${busy}`] });
    expect(fs.readdirSync(path.join(w.root, 'trash'))).toEqual([]);
    expect(fs.readFileSync(path.join(outside, 'host-file'), 'utf8')).toBe('host data');
  });

  test('handler containers of a dead process or another boot are removed, their volumes kept; a live one stays', async () => {
    const w = world();
    const target = await w.runtime.create({ rootfs: w.rootfs('target'), volumes: ['/data'] });
    const dead = await w.runtime.create({ rootfs: w.rootfs('dead'), volumesFrom: [target.id] });
    await w.runtime.createVolumes(dead.id, ['/scratch']);
    const rebooted = await w.runtime.create({ rootfs: w.rootfs('rebooted'), volumesFrom: [`${target.id}:ro`] });
    const live = await w.runtime.create({ rootfs: w.rootfs('live'), volumesFrom: [target.id] });
    // A pid that was alive a moment ago and is gone: the handler's process died.
    const deadPid = spawnSync('true').pid;
    const sleeper = spawnSync('sh', ['-c', 'sleep 300 >/dev/null 2>&1 & echo $!'], { encoding: 'utf8' });
    const livePid = Number(sleeper.stdout.trim());
    try {
      w.editConfig(dead.id, (config) => (config.handler = { pid: deadPid, bootId: BOOT_ID }));
      w.editConfig(rebooted.id, (config) => (config.handler = { pid: livePid, bootId: randomUUID() }));
      w.editConfig(live.id, (config) => (config.handler = { pid: livePid, bootId: BOOT_ID }));
      const volumesBefore = fs.readdirSync(path.join(w.root, 'volumes')).sort();

      const report = await w.restarted().recover();

      expect(report).toEqual({ ...NOTHING, removedHandlers: [dead.id, rebooted.id] });
      await expectCode(w.runtime.get(dead.id), 'ERR_CONTAINER_NOT_FOUND');
      await expectCode(w.runtime.get(rebooted.id), 'ERR_CONTAINER_NOT_FOUND');
      expect((await w.runtime.list()).map((c) => c.id)).toEqual([target.id, live.id]);
      expect(fs.readdirSync(path.join(w.root, 'volumes')).sort()).toEqual(volumesBefore);
      expect((await w.runtime.volumes.inspect(volumeOf(target, '/data'))).usedBy.map((u) => u.containerId)).toEqual([target.id, live.id]);
      await expectNothingLeft(w.restarted());
    } finally {
      process.kill(livePid, 'SIGKILL');
    }
  });
});

describe('recover() as a whole', () => {
  test('every kind of damage at once is repaired in one call; the second and third calls report nothing', async () => {
    const w = world();
    const stray = await w.runtime.create({ rootfs: w.rootfs('stray'), volumes: ['/data'] });
    await mountByHand(w.volumeDir(volumeOf(stray, '/data')), stray.rootfs, '/data', 'rw');
    const lost = await w.runtime.create({ rootfs: w.rootfs('lost'), volumes: ['/data'] });
    await w.runtime.mount(lost.id);
    umountByHand(path.join(lost.rootfs, 'data'));
    const old = await w.runtime.create({ rootfs: w.rootfs('old'), volumes: ['/data'] });
    await w.runtime.mount(old.id);
    w.editConfig(old.id, (config) => (config.mountedInBoot = randomUUID()));
    const handler = await w.runtime.create({ rootfs: w.rootfs('handler'), volumesFrom: [lost.id] });
    w.editConfig(handler.id, (config) => (config.handler = { pid: spawnSync('true').pid, bootId: BOOT_ID }));
    const half = randomUUID();
    fs.mkdirSync(w.volumeDir(half));
    fs.writeFileSync(path.join(w.root, 'pending', `${randomUUID()}.json`), JSON.stringify([half]));
    fs.writeFileSync(path.join(w.root, 'containers', `.${lost.id}.json.000000000000.tmp`), '');

    const report = await w.restarted().recover();

    expect({ ...report, unmounted: [...report.unmounted].sort(byPath) }).toEqual({
      failed: [],
      rebooted: [old.id],
      namespaceGone: [],
      attachmentsGone: [],
      removedHandlers: [handler.id],
      unmounted: [stray.id, old.id].map((id) => ({ containerId: id, path: '/data' })).sort(byPath),
      remounted: [{ containerId: lost.id, path: '/data' }],
      removedVolumes: [half],
      removedFiles: [`containers/.${lost.id}.json.000000000000.tmp`],
    });
    expect(table(w.dir)).toEqual([['rootfs/lost/data', w.volumeDir(volumeOf(lost, '/data')), 'rw']]);
    await expectNothingLeft(w.restarted());
    await expectNothingLeft(w.runtime);
  });

  test('an empty store, or a store in order, gives an empty report and changes nothing', async () => {
    const w = world();
    expect(await w.runtime.recover()).toEqual(NOTHING);
    const c = await w.runtime.create({ rootfs: w.rootfs('c'), volumes: ['/data', '/data/sub'] });
    await w.runtime.mount(c.id);
    const mounts = table(w.dir);
    const tree = await snapshotTree(w.root);
    expect(await w.restarted().recover()).toEqual(NOTHING);
    expect(table(w.dir)).toEqual(mounts);
    expect(await snapshotTree(w.root)).toEqual(tree);
  });

  test.each([
    { what: 'not JSON', text: () => '{"version": 1, "id": ' },
    { what: 'an id that is not its file name', text: (id: string) => JSON.stringify(corruptBase(id, { id: randomUUID() })) },
    { what: 'a volume id pointing outside the store', text: (id: string) => JSON.stringify(corruptBase(id, { volumes: [{ path: '/data', volumeId: '../../etc', mode: 'rw', origin: 'created' }] })) },
    { what: 'a rootfs of /', text: (id: string) => JSON.stringify(corruptBase(id, { rootfs: '/' })) },
  ])('a corrupt configuration ($what) is moved aside and reported in failed; no half-created volume is deleted in that run', async ({ text }) => {
    const w = world();
    const stray = await w.runtime.create({ rootfs: w.rootfs('stray'), volumes: ['/data'] });
    await mountByHand(w.volumeDir(volumeOf(stray, '/data')), stray.rootfs, '/data', 'rw');
    const lost = await w.runtime.create({ rootfs: w.rootfs('lost'), volumes: ['/data'] });
    await w.runtime.mount(lost.id);
    umountByHand(path.join(lost.rootfs, 'data'));
    const half = randomUUID();
    fs.mkdirSync(w.volumeDir(half));
    fs.writeFileSync(path.join(w.root, 'pending', `${randomUUID()}.json`), JSON.stringify([half]));
    fs.writeFileSync(path.join(w.root, 'containers', `.${lost.id}.json.000000000000.tmp`), '');
    fs.mkdirSync(path.join(w.root, 'trash', `${randomUUID()}.1`));
    const corruptId = randomUUID();
    const corruptText = text(corruptId);
    fs.writeFileSync(path.join(w.root, 'containers', `${corruptId}.json`), corruptText);

    const report = await w.restarted().recover();

    const [moved, ...more] = fs.readdirSync(path.join(w.root, 'corrupt'));
    expect(more).toEqual([]);
    expect(fs.readFileSync(path.join(w.root, 'corrupt', moved!), 'utf8')).toBe(corruptText);
    expect(report.failed).toEqual([{ containerId: corruptId, code: 'ERR_CORRUPT_CONFIG', message: expect.stringContaining(`corrupt/${moved}`) }]);
    expect(report.failed[0]!.message).toContain(corruptId);
    // The moved configuration may have named it: kept until the next run.
    expect(report.removedVolumes).toEqual([]);
    expect(fs.existsSync(w.volumeDir(half))).toBe(true);
    // The rest is repaired as usual.
    expect(report.unmounted).toEqual([{ containerId: stray.id, path: '/data' }]);
    expect(report.remounted).toEqual([{ containerId: lost.id, path: '/data' }]);
    expect(table(w.dir)).toEqual([['rootfs/lost/data', w.volumeDir(volumeOf(lost, '/data')), 'rw']]);

    expect(await w.restarted().recover()).toEqual({ ...NOTHING, removedVolumes: [half] });
    await expectNothingLeft(w.restarted());
  });
});

function corruptBase(id: string, override: Record<string, unknown>): Record<string, unknown> {
  return { version: 1, id, rootfs: '/nonexistent-rootfs', createdAt: new Date().toISOString(), mounted: false, volumes: [], ...override };
}

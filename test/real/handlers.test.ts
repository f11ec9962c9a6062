import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import {
  BindMounter,
  ContainerRuntime,
  ContainerVolumesError,
  HandlerError,
  type ContainerInfo,
  type HandlerVolume,
  type Progress,
} from '../../src/index.js';
import { busyboxRootfs } from '../helpers/busybox-rootfs.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Custom volume handlers (seed §4–5, SPEC §4.6, issue 3) with real bind mounts: function
 * and command handlers, the in-use protection of their transient container, that
 * nothing (container, mount, process, scratch directory) survives a handler that
 * throws, times out or is aborted, and backup → restore round trips compared file by
 * file. Command handlers run in a busybox rootfs built from Debian's busybox-static.
 *
 * The library's scratch directories (a function handler's rootfs, the backup manifest's,
 * the restore target) are made with fs.promises.mkdtemp in os.tmpdir(), shared with
 * other processes: the suite wraps mkdtemp to learn which ones are ours, and checks
 * they are gone. (Pointing TMPDIR elsewhere does not work under jest: tests get a copy
 * of process.env, and os.tmpdir() reads the real environment.)
 */

jest.setTimeout(120_000);

const MANIFEST = 'container-volumes-backup.json';
const WORKER = fileURLToPath(new URL('../helpers/handler-worker.mjs', import.meta.url));
const MiB = 1024 * 1024;

let base: string;
/** A static busybox rootfs for command handlers. */
let bb: string;
/** Every scratch directory the library made in this process (see above). */
const scratchDirs: string[] = [];
const realMkdtemp = fsp.mkdtemp;

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('handlers-');
  bb = await busyboxRootfs(path.join(base, 'busybox-rootfs'));
  (fsp as { mkdtemp: unknown }).mkdtemp = async (prefix: string, options?: BufferEncoding) => {
    const dir = await realMkdtemp(prefix, options);
    if (path.basename(prefix).startsWith('container-volumes-')) scratchDirs.push(dir);
    return dir;
  };
});

afterAll(async () => {
  (fsp as { mkdtemp: unknown }).mkdtemp = realMkdtemp;
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

async function world() {
  const dir = await fsp.mkdtemp(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  const volumeDir = (volumeId: string) => path.join(root, 'volumes', volumeId);
  return {
    dir,
    root,
    runtime,
    volumeDir,
    async rootfs(name: string): Promise<string> {
      const p = path.join(dir, 'rootfs', name);
      await fsp.mkdir(p, { recursive: true });
      return p;
    },
    /** The host directory of the volume `container` has at `containerPath`. */
    hostPath(container: ContainerInfo, containerPath: string): string {
      const volume = container.volumes.find((v) => v.path === containerPath);
      if (!volume) throw new Error(`${container.id} has no volume at ${containerPath}`);
      return volumeDir(volume.volumeId);
    },
  };
}
type World = Awaited<ReturnType<typeof world>>;

/** A busybox rootfs in the world whose shell can start background jobs: busybox sh gives them /dev/null as stdin, and fails without one. */
async function jobsRootfs(w: World): Promise<string> {
  const dir = await busyboxRootfs(path.join(w.dir, 'jobs-rootfs'));
  await fsp.mkdir(path.join(dir, 'dev'));
  await fsp.writeFile(path.join(dir, 'dev/null'), '');
  return dir;
}

/** A container with volumes at /data, /data/nested and /logs, each holding a file. */
async function dbWorld() {
  const w = await world();
  const db = await w.runtime.create({ rootfs: await w.rootfs('db'), volumes: ['/data', '/data/nested', '/logs'] });
  await fsp.writeFile(path.join(w.hostPath(db, '/data'), 'a'), 'a\n');
  await fsp.writeFile(path.join(w.hostPath(db, '/data/nested'), 'b'), 'b\n');
  await fsp.writeFile(path.join(w.hostPath(db, '/logs'), 'c'), 'c\n');
  return { ...w, db };
}

// ---------------------------------------------------------------------------------------
// What a handler may leave behind, and how to look for it.

interface Proc {
  pid: number;
  ppid: number;
  state: string;
  /** Where /proc/<pid>/root leads: a chrooted handler command's is its handler rootfs. */
  root: string;
  args: string;
  /** When it started, in clock ticks after boot. */
  startTime: number;
}

/** Every process, read from /proc (no procps on a minimal Debian). */
function processes(): Proc[] {
  const out: Proc[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const [state, ppid] = fields;
      let root = '';
      try {
        root = fs.readlinkSync(`/proc/${name}/root`);
      } catch {
        // A zombie has no root any more.
      }
      const args = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
      out.push({ pid: Number(name), ppid: Number(ppid), state: state as string, root, args, startTime: Number(fields[19]) });
    } catch {
      // Gone while we looked.
    }
  }
  return out;
}

const isUnder = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);

/**
 * Live processes that are ours: descendants of this process (a namespace holder, an
 * nsenter, a tar), and any process chrooted under `roots` wherever it was reparented
 * (a handler command's orphaned child). Zombies are skipped: this sandbox's pid 1 may
 * not reap the orphans it adopts.
 */
function ourProcesses(roots: readonly string[]): Proc[] {
  const all = processes().filter((p) => p.state !== 'Z');
  const descendants = new Set([process.pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) {
      if (descendants.has(p.ppid) && !descendants.has(p.pid)) {
        descendants.add(p.pid);
        grew = true;
      }
    }
  }
  return all.filter((p) => p.pid !== process.pid && (descendants.has(p.pid) || roots.some((r) => p.root !== '' && isUnder(p.root, r))));
}

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
async function until<T>(what: string, check: () => T | Promise<T>, ms = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * After a handler settled: the store has exactly `containerIds`, nothing is mounted under
 * the world, the busybox rootfs or a scratch directory (in this namespace: the handler's
 * never reach it, and none of ours is expected), the library's scratch directories are
 * gone, and no process of ours is left (so no private namespace either: it lives as
 * long as a process in it does).
 */
async function expectNothingLeft(w: World, containerIds: readonly string[]): Promise<void> {
  expect((await w.runtime.list()).map((c) => c.id).sort()).toEqual([...containerIds].sort());
  expect(mountsUnder(w.dir)).toEqual([]);
  expect(mountsUnder(bb)).toEqual([]);
  const mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  expect(mountinfo).not.toMatch(/container-volumes-(handler|backup|restore)-/);
  expect(scratchDirs.filter((dir) => fs.existsSync(dir))).toEqual([]);
  expect(ourProcesses([bb, w.dir, ...scratchDirs])).toEqual([]);
}

/** A worker process (test/helpers/handler-worker.mjs), with its TMPDIR in the world so that what a kill leaves there is cleaned up with it. */
function startWorker(w: World, args: string[]) {
  const env = { ...process.env, TMPDIR: path.join(w.dir, 'worker-tmp') };
  fs.mkdirSync(env.TMPDIR, { recursive: true });
  return spawn(process.execPath, [WORKER, w.root, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env });
}

// ---------------------------------------------------------------------------------------

describe('function handlers', () => {
  test('get each volume with path, mode, volumeId and hostPath, see the data, and resolve to what they return', async () => {
    const w = await dbWorld();
    const { db } = w;
    let seen: { container: ContainerInfo; volumes: HandlerVolume[]; files: string[]; listed: string[]; aborted: boolean } | undefined;
    const result = await w.runtime.runHandler(db.id, async ({ container, volumes, signal }) => {
      const files = await Promise.all(
        [['/data', 'a'], ['/data/nested', 'b'], ['/logs', 'c']].map(async ([p, f]) =>
          fsp.readFile(path.join(volumes.find((v) => v.path === p)!.hostPath, f as string), 'utf8'),
        ),
      );
      const listed = (await w.runtime.list()).map((c) => c.id);
      seen = { container, volumes, files, listed, aborted: signal.aborted };
      return { answer: 42 };
    });
    expect(result).toEqual({ answer: 42 });
    const s = seen!;
    expect(s.container.id).not.toBe(db.id);
    // Its rootfs is a scratch directory, deleted afterwards (checked below).
    expect(scratchDirs).toContain(s.container.rootfs);
    expect(s.volumes.map(({ path: p, mode, volumeId, hostPath, origin }) => ({ p, mode, volumeId, hostPath, origin }))).toEqual(
      expect.arrayContaining(
        db.volumes.map((v) => ({ p: v.path, mode: 'rw', volumeId: v.volumeId, hostPath: w.volumeDir(v.volumeId), origin: { from: db.id } })),
      ),
    );
    expect(s.volumes).toHaveLength(3);
    expect(s.files).toEqual(['a\n', 'b\n', 'c\n']);
    expect(s.aborted).toBe(false);
    // While it ran, the transient handler container was a container like any other.
    expect(s.listed.sort()).toEqual([db.id, s.container.id].sort());
    expect(s.container.volumes.map((v) => v.volumeId).sort()).toEqual(db.volumes.map((v) => v.volumeId).sort());
    await expectNothingLeft(w, [db.id]);
  });

  test("mode 'ro' gives read-only modes; without it each volume keeps the target's mode, and 'rw' cannot upgrade a read-only share", async () => {
    const w = await dbWorld();
    const { db } = w;
    const reader = await w.runtime.create({ rootfs: await w.rootfs('reader'), volumesFrom: [`${db.id}:ro`] });
    const modes = (volumes: HandlerVolume[]) => Object.fromEntries(volumes.map((v) => [v.path, v.mode]));
    const all = (mode: string) => ({ '/data': mode, '/data/nested': mode, '/logs': mode });
    expect(await w.runtime.runHandler(db.id, ({ volumes }) => modes(volumes), { mode: 'ro' })).toEqual(all('ro'));
    expect(await w.runtime.runHandler(db.id, ({ volumes }) => modes(volumes), { mode: 'rw' })).toEqual(all('rw'));
    expect(await w.runtime.runHandler(db.id, ({ volumes }) => modes(volumes))).toEqual(all('rw'));
    expect(await w.runtime.runHandler(reader.id, ({ volumes }) => modes(volumes))).toEqual(all('ro'));
    expect(await w.runtime.runHandler(reader.id, ({ volumes }) => modes(volumes), { mode: 'rw' })).toEqual(all('ro'));
    await expectNothingLeft(w, [db.id, reader.id]);
  });

  test('two handlers may run on one container at once, each with its own transient container', async () => {
    const w = await dbWorld();
    const { db } = w;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const ids: string[] = [];
    const run = () =>
      w.runtime.runHandler(db.id, async ({ container }) => {
        ids.push(container.id);
        await gate;
        return container.id;
      });
    const both = Promise.all([run(), run()]);
    await until('both handlers to start', () => ids.length === 2);
    expect((await w.runtime.list()).map((c) => c.id).sort()).toEqual([db.id, ...ids].sort());
    release();
    expect((await both).sort()).toEqual([...ids].sort());
    expect(new Set(ids).size).toBe(2);
    await expectNothingLeft(w, [db.id]);
  });
});

describe('in-use protection: the volumes cannot be removed or pruned while a handler uses them', () => {
  test.each([
    ['remove(target)', {}],
    ['remove(target, { volumes: true })', { volumes: true }],
  ] as const)('even after %s while the handler runs; once it ends they can be', async (_name, removeOptions) => {
    const w = await dbWorld();
    const { db } = w;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let handlerId: string | undefined;
    const running = w.runtime.runHandler(db.id, async ({ container }) => {
      handlerId = container.id;
      await gate;
      return 'done';
    });
    const hid = await until('the handler to start', () => handlerId);

    await w.runtime.remove(db.id, removeOptions);
    expect((await w.runtime.list()).map((c) => c.id)).toEqual([hid]);
    for (const v of db.volumes) {
      const error = await expectCode(w.runtime.volumes.remove(v.volumeId), 'ERR_VOLUME_IN_USE');
      expect(error.message).toContain(hid);
      expect(error.message).toContain(v.volumeId);
      const info = await w.runtime.volumes.inspect(v.volumeId);
      expect(info.usedBy).toEqual([{ containerId: hid, path: v.path, mode: 'rw' }]);
    }
    expect(await w.runtime.volumes.prune()).toEqual({ removed: [] });
    for (const v of db.volumes) expect(fs.existsSync(w.volumeDir(v.volumeId))).toBe(true);
    expect(await fsp.readFile(path.join(w.hostPath(db, '/data/nested'), 'b'), 'utf8')).toBe('b\n');

    release();
    expect(await running).toBe('done');
    await expectNothingLeft(w, []);
    const [first, ...rest] = db.volumes;
    await w.runtime.volumes.remove(first!.volumeId);
    expect((await w.runtime.volumes.prune()).removed.sort()).toEqual(rest.map((v) => v.volumeId).sort());
    expect(await w.runtime.volumes.list()).toEqual([]);
  });

  test('a command handler protects them too, for as long as its command runs', async () => {
    const w = await dbWorld();
    const { db } = w;
    const logs = w.hostPath(db, '/logs');
    const running = w.runtime.runHandler(db.id, {
      command: ['/bin/sh', '-c', 'touch /logs/started; while [ ! -e /logs/go ]; do sleep 0.05; done'],
      rootfs: bb,
    });
    await until('the command to start', () => fs.existsSync(path.join(logs, 'started')));
    const [handler] = (await w.runtime.list()).filter((c) => c.id !== db.id);
    expect(handler?.rootfs).toBe(bb);
    await w.runtime.remove(db.id);
    const error = await expectCode(w.runtime.volumes.remove(db.volumes[0]!.volumeId), 'ERR_VOLUME_IN_USE');
    expect(error.message).toContain(handler!.id);
    expect(await w.runtime.volumes.prune()).toEqual({ removed: [] });
    await fsp.writeFile(path.join(logs, 'go'), '');
    expect(await running).toEqual({ exitCode: 0, stdout: '', stderr: '' });
    await expectNothingLeft(w, []);
    expect((await w.runtime.volumes.prune()).removed).toHaveLength(3);
  });

  test('recover() leaves a live handler alone, and removes the container of a handler whose process was killed', async () => {
    const w = await dbWorld();
    const { db } = w;
    // Live: ours.
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const running = w.runtime.runHandler(db.id, () => gate);
    await until('the handler to start', async () => (await w.runtime.list()).length === 2);
    expect((await w.runtime.recover()).removedHandlers).toEqual([]);
    expect(await w.runtime.list()).toHaveLength(2);
    release();
    await running;

    // Dead: a worker process SIGKILLed while its function handler runs.
    const worker = startWorker(w, [db.id, 'function']);
    let out = '';
    worker.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const line = await until('the worker to run its handler', () => out.split('\n').find((l) => l.includes('"running"')), 30_000);
    const hid = (JSON.parse(line) as { container: string }).container;
    worker.kill('SIGKILL');
    await new Promise((resolve) => worker.once('exit', resolve));

    expect((await w.runtime.list()).map((c) => c.id).sort()).toEqual([db.id, hid].sort());
    await w.runtime.remove(db.id);
    await expectCode(w.runtime.volumes.remove(db.volumes[0]!.volumeId), 'ERR_VOLUME_IN_USE');
    const report = await w.runtime.recover();
    expect(report.removedHandlers).toEqual([hid]);
    expect(report.removedVolumes).toEqual([]);
    expect(await w.runtime.list()).toEqual([]);
    await expectNothingLeft(w, []);
    expect((await w.runtime.volumes.prune()).removed).toHaveLength(3);
  });

  test("a command handler's processes and namespace die with the process that ran it", async () => {
    const w = await dbWorld();
    const { db } = w;
    const worker = startWorker(w, [db.id, 'command', bb, '/bin/sleep', '47']);
    const command = await until('the command to run', () => ourProcesses([bb]).find((p) => p.args === '/bin/sleep 47'), 30_000);
    const mine = ourProcesses([bb]).filter((p) => p.pid !== worker.pid);
    // The namespace holder, the command, and whatever is between them.
    expect(mine.map((p) => p.args)).toEqual(expect.arrayContaining(['sleep infinity', '/bin/sleep 47']));
    expect(fs.readFileSync(`/proc/${command.pid}/mountinfo`, 'utf8')).toMatch(/ \/data\/nested /);
    worker.kill('SIGKILL');
    await new Promise((resolve) => worker.once('exit', resolve));
    await until('the handler processes to die', () => ourProcesses([bb]).length === 0, 5000).catch(() => undefined);
    expect(ourProcesses([bb])).toEqual([]);
    expect((await w.runtime.recover()).removedHandlers).toHaveLength(1);
    await expectNothingLeft(w, [db.id]);
  });
});

// ---------------------------------------------------------------------------------------
// A handler's mounts and processes are its own: the host's mounts stay, its processes die
// with it, and its transient container says what it is.

/** The mount and pid namespaces of a process, as /proc/<pid>/ns reads them. */
function namespacesOf(pid: number): { mnt: string; pid: string } {
  return { mnt: fs.readlinkSync(`/proc/${pid}/ns/mnt`), pid: fs.readlinkSync(`/proc/${pid}/ns/pid`) };
}

/** Now, in clock ticks after boot (USER_HZ, 100 on Linux), as /proc/<pid>/stat gives start times. */
function bootTicks(): number {
  return Math.ceil(Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100);
}

/**
 * Live processes in the mount namespace `ns.mnt`, or in the pid namespace `ns.pid` when
 * it is not ours, started before `bornBefore` (boot ticks): once a namespace is gone the
 * kernel gives its id to the next new one, whose processes (another test's, say) are
 * not survivors of it.
 */
function processesIn(ns: { mnt: string; pid: string }, bornBefore = Infinity): Proc[] {
  const ownPid = fs.readlinkSync('/proc/self/ns/pid');
  return processes().filter((p) => {
    if (p.state === 'Z' || p.startTime > bornBefore) return false;
    try {
      const theirs = namespacesOf(p.pid);
      return theirs.mnt === ns.mnt || (ns.pid !== ownPid && theirs.pid === ns.pid);
    } catch {
      return false;
    }
  });
}

/** A container whose rootfs is a busybox rootfs (with /dev/null), as a database container holding its own tools would be. */
async function toolsWorld() {
  const w = await world();
  const rootfs = await jobsRootfs(w);
  const db = await w.runtime.create({ rootfs, volumes: ['/data', '/data/nested', '/logs'] });
  await fsp.writeFile(path.join(w.hostPath(db, '/data'), 'a'), 'a\n');
  await fsp.writeFile(path.join(w.hostPath(db, '/data/nested'), 'b'), 'b\n');
  return { ...w, db };
}

/** The host's mounts under `dir`, as comparable data. */
const mountsAt = (dir: string) => mountsUnder(dir).map((m) => [m.id, m.mountPoint, m.root, m.options.join(',')]);

describe("a handler never touches the host's mounts", () => {
  test("a command handler run in the mounted target's own rootfs leaves the target's mounts in place", async () => {
    const w = await toolsWorld();
    const { db } = w;
    await w.runtime.mount(db.id);
    const before = mountsAt(db.rootfs);
    expect(before).toHaveLength(3);
    const result = await w.runtime.runHandler(db.id, { command: ['/bin/cat', '/data/a', '/data/nested/b'], rootfs: db.rootfs, mode: 'ro' });
    expect(result.stdout).toBe('a\nb');
    expect(mountsAt(db.rootfs)).toEqual(before);
    expect((await w.runtime.get(db.id)).mounted).toBe(true);
    expect(await fsp.readFile(path.join(db.rootfs, 'data/nested/b'), 'utf8')).toBe('b\n');
    // And rw, through a function handler, and once more: nothing changes either.
    await w.runtime.runHandler(db.id, { command: ['/bin/sh', '-c', 'echo x > /logs/x'], rootfs: db.rootfs });
    await w.runtime.runHandler(db.id, () => 'ran');
    expect(mountsAt(db.rootfs)).toEqual(before);
    expect(await fsp.readFile(path.join(db.rootfs, 'logs/x'), 'utf8')).toBe('x\n');
    await w.runtime.unmount(db.id);
    await expectNothingLeft(w, [db.id]);
  });

  test("a command handler run in the rootfs of another mounted container sharing the volumes leaves that container's mounts in place", async () => {
    const w = await toolsWorld();
    const { db } = w;
    const toolsRootfs = await busyboxRootfs(path.join(w.dir, 'tools-rootfs'));
    const tools = await w.runtime.create({ rootfs: toolsRootfs, volumesFrom: [db.id] });
    await w.runtime.mount(tools.id);
    await w.runtime.mount(db.id);
    const before = { tools: mountsAt(toolsRootfs), db: mountsAt(db.rootfs) };
    expect(before.tools).toHaveLength(3);
    const result = await w.runtime.runHandler(db.id, { command: ['/bin/cat', '/data/a'], rootfs: toolsRootfs, mode: 'ro' });
    expect(result.stdout).toBe('a');
    expect({ tools: mountsAt(toolsRootfs), db: mountsAt(db.rootfs) }).toEqual(before);
    expect((await w.runtime.get(tools.id)).mounted).toBe(true);
    await w.runtime.unmount(tools.id);
    await w.runtime.unmount(db.id);
    await expectNothingLeft(w, [db.id, tools.id]);
  });

  test("unmount of a running handler's container is a no-op on the host, and mount of it is refused: ERR_HANDLER_RUNNING", async () => {
    const w = await toolsWorld();
    const { db } = w;
    await w.runtime.mount(db.id);
    const before = mountsAt(db.rootfs);
    const logs = w.hostPath(db, '/logs');
    const running = w.runtime.runHandler(db.id, {
      command: ['/bin/sh', '-c', 'touch /logs/started; while [ ! -e /logs/go ]; do sleep 0.05; done'],
      rootfs: db.rootfs,
    });
    await until('the command to start', () => fs.existsSync(path.join(logs, 'started')));
    const handler = (await w.runtime.list()).find((c) => c.id !== db.id)!;
    expect((await w.runtime.unmount(handler.id)).mounted).toBe(false);
    expect(mountsAt(db.rootfs)).toEqual(before);
    const error = await expectCode(w.runtime.mount(handler.id), 'ERR_HANDLER_RUNNING');
    expect(error.message).toContain(handler.id);
    expect(mountsAt(db.rootfs)).toEqual(before);
    await fsp.writeFile(path.join(logs, 'go'), '');
    await running;
    expect(mountsAt(db.rootfs)).toEqual(before);
    await w.runtime.unmount(db.id);
    await expectNothingLeft(w, [db.id]);
  });
});

describe("a command handler's processes die with it", () => {
  test('a child forked by the command dies when the process running the handler is SIGKILLed; recover() then removes the container', async () => {
    const w = await toolsWorld();
    const { db } = w;
    const worker = startWorker(w, [db.id, 'command', db.rootfs, '/bin/sh', '-c', 'sleep 1000 & touch /logs/started; wait']);
    let ns: { mnt: string; pid: string } | undefined;
    try {
      const child = await until('the child to run', () => ourProcesses([db.rootfs]).find((p) => p.args === 'sleep 1000'), 30_000);
      ns = namespacesOf(child.pid);
      expect(processesIn(ns).map((p) => p.pid)).toContain(child.pid);
      expect(fs.readFileSync(`/proc/${child.pid}/mountinfo`, 'utf8')).toMatch(/ \/data\/nested /);
      const beforeKill = bootTicks();
      worker.kill('SIGKILL');
      await new Promise((resolve) => worker.once('exit', resolve));
      await until('the handler processes to die', () => processesIn(ns!, beforeKill).length === 0).catch(() => undefined);
      expect(processesIn(ns, beforeKill)).toEqual([]);
      const report = await w.runtime.recover();
      expect(report.removedHandlers).toHaveLength(1);
      expect(report.failed).toEqual([]);
      await w.runtime.remove(db.id, { volumes: true });
      await expectNothingLeft(w, []);
    } finally {
      worker.kill('SIGKILL');
      for (const p of ns ? processesIn(ns) : []) process.kill(p.pid, 'SIGKILL');
    }
  });

  test('recover() stops a handler whose runner is gone but whose processes still live, before it removes its container', async () => {
    const w = await toolsWorld();
    const { db } = w;
    const logs = w.hostPath(db, '/logs');
    const running = w.runtime.runHandler(db.id, { command: ['/bin/sh', '-c', 'sleep 1001 & touch /logs/started; wait'], rootfs: db.rootfs });
    const settled = running.then(
      () => undefined,
      (e: unknown) => e,
    );
    await until('the command to start', () => fs.existsSync(path.join(logs, 'started')));
    const child = ourProcesses([db.rootfs]).find((p) => p.args === 'sleep 1001')!;
    const ns = namespacesOf(child.pid);
    // As if the process running it had died: its configuration names a process that is gone.
    const handler = (await w.runtime.list()).find((c) => c.id !== db.id)!;
    const file = path.join(w.root, 'containers', `${handler.id}.json`);
    const config = JSON.parse(await fsp.readFile(file, 'utf8')) as { handler: { pid: number } };
    const gone = spawn('true');
    await new Promise((resolve) => gone.once('exit', resolve));
    config.handler.pid = gone.pid!;
    await fsp.writeFile(file, JSON.stringify(config));
    await w.runtime.remove(db.id);

    const beforeRecover = bootTicks();
    const report = await w.runtime.recover();
    // By the time the container is gone, so is every process that had the volumes mounted.
    expect(processesIn(ns, beforeRecover)).toEqual([]);
    expect(report.removedHandlers).toEqual([handler.id]);
    const failed = (await settled) as HandlerError;
    expect(failed).toBeInstanceOf(HandlerError);
    expect(failed.code).toBe('ERR_HANDLER_FAILED');
    expect((await w.runtime.volumes.prune()).removed).toHaveLength(3);
    await expectNothingLeft(w, []);
  });
});

describe('removing a running handler container', () => {
  test('is refused (ERR_HANDLER_RUNNING) for a function handler, even with force; list() marks it as a handler container', async () => {
    const w = await dbWorld();
    const { db } = w;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let handlerId: string | undefined;
    const running = w.runtime.runHandler(db.id, async ({ container }) => {
      handlerId = container.id;
      await gate;
      return fsp.readFile(path.join(w.hostPath(db, '/data'), 'a'), 'utf8');
    });
    const hid = await until('the handler to start', () => handlerId);
    const listed = await w.runtime.list();
    expect(listed.find((c) => c.id === hid)?.handler).toEqual({ pid: process.pid });
    expect(listed.find((c) => c.id === db.id)).not.toHaveProperty('handler');
    expect((await w.runtime.get(hid)).handler).toEqual({ pid: process.pid });
    await w.runtime.remove(db.id);
    for (const options of [{ volumes: true }, {}, { force: true, volumes: true }]) {
      const error = await expectCode(w.runtime.remove(hid, options), 'ERR_HANDLER_RUNNING');
      expect(error.message).toContain(hid);
    }
    expect((await w.runtime.list()).map((c) => c.id)).toEqual([hid]);
    for (const v of db.volumes) expect(fs.existsSync(w.volumeDir(v.volumeId))).toBe(true);
    release();
    expect(await running).toBe('a\n');
    await expectNothingLeft(w, []);
    expect((await w.runtime.volumes.prune()).removed).toHaveLength(3);
  });

  test('is refused (ERR_HANDLER_RUNNING) for a command handler; with force its processes are killed first, then the volumes deleted', async () => {
    const w = await dbWorld();
    const { db } = w;
    const rootfs = await jobsRootfs(w);
    const logs = w.hostPath(db, '/logs');
    const running = w.runtime.runHandler(db.id, { command: ['/bin/sh', '-c', 'sleep 1002 & touch /logs/started; wait'], rootfs });
    const settled = running.then(
      () => undefined,
      (e: unknown) => e,
    );
    await until('the command to start', () => fs.existsSync(path.join(logs, 'started')));
    const child = ourProcesses([rootfs]).find((p) => p.args === 'sleep 1002')!;
    const ns = namespacesOf(child.pid);
    const hid = (await w.runtime.list()).find((c) => c.id !== db.id)!.id;
    await w.runtime.remove(db.id);
    const error = await expectCode(w.runtime.remove(hid, { volumes: true }), 'ERR_HANDLER_RUNNING');
    expect(error.message).toContain(hid);
    for (const v of db.volumes) expect(fs.existsSync(w.volumeDir(v.volumeId))).toBe(true);
    expect(processesIn(ns).map((p) => p.pid)).toContain(child.pid);

    const beforeRemove = bootTicks();
    await w.runtime.remove(hid, { force: true, volumes: true });
    expect(processesIn(ns, beforeRemove)).toEqual([]);
    for (const v of db.volumes) expect(fs.existsSync(w.volumeDir(v.volumeId))).toBe(false);
    const failed = (await settled) as HandlerError;
    expect(failed).toBeInstanceOf(HandlerError);
    expect(failed.code).toBe('ERR_HANDLER_FAILED');
    await expectNothingLeft(w, []);
  });
});

describe('nothing survives a handler that throws, times out or is aborted', () => {
  test('a function handler that throws: the same error, no container left', async () => {
    const w = await dbWorld();
    const boom = new Error('boom');
    let handlerId: string | undefined;
    const rejected = await w.runtime
      .runHandler(w.db.id, ({ container }) => {
        handlerId = container.id;
        throw boom;
      })
      .catch((e: unknown) => e);
    expect(rejected).toBe(boom);
    expect(handlerId).toBeDefined();
    const asyncBoom = new Error('async boom');
    await expect(w.runtime.runHandler(w.db.id, async () => Promise.reject(asyncBoom))).rejects.toBe(asyncBoom);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('a command that times out is killed: ERR_HANDLER_TIMED_OUT soon after the time-out', async () => {
    const w = await dbWorld();
    const started = Date.now();
    const error = await expectCode(w.runtime.runHandler(w.db.id, { command: ['/bin/sleep', '31'], rootfs: bb, timeout: 300 }), 'ERR_HANDLER_TIMED_OUT');
    expect(error).toBeInstanceOf(HandlerError);
    expect(error.message).toContain(w.db.id);
    expect(Date.now() - started).toBeLessThan(10_000);
    await expectNothingLeft(w, [w.db.id]);
  });

  test.each([
    ['times out', 'sleep 15; echo never'],
    ['is aborted', 'sleep 16; echo never'],
    ['times out', 'sleep 17 & sleep 18'],
    ['is aborted', 'sleep 19 & sleep 20'],
  ])(
    'a command whose shell has children running when it %s (%s): they die too, and the call returns soon',
    async (how, script) => {
      // The shell forks sleep. Killing the shell alone orphans it: the orphan keeps the
      // private namespace (and so the volumes' mounts) alive and holds the output pipes,
      // so the call cannot end before it does.
      const w = await dbWorld();
      const rootfs = await jobsRootfs(w);
      const controller = new AbortController();
      const started = Date.now();
      const settled = w.runtime.runHandler(w.db.id, {
        command: ['/bin/sh', '-c', script],
        rootfs,
        ...(how === 'times out' ? { timeout: 300 } : { signal: controller.signal }),
      });
      if (how === 'is aborted') {
        const firstChild = /^sleep \d+/.exec(script)![0];
        await until('the child to run', () => ourProcesses([rootfs]).some((p) => p.args === firstChild));
        controller.abort();
      }
      const error = await expectCode(settled, how === 'times out' ? 'ERR_HANDLER_TIMED_OUT' : 'ERR_HANDLER_ABORTED');
      expect(error).toBeInstanceOf(HandlerError);
      const elapsed = Date.now() - started;
      await expectNothingLeft(w, [w.db.id]);
      expect(elapsed).toBeLessThan(8_000);
    },
    60_000,
  );

  test('a command that exits leaving a child in the background: the call returns when it exits, and the child is killed', async () => {
    const w = await dbWorld();
    const rootfs = await jobsRootfs(w);
    const started = Date.now();
    const result = await w.runtime.runHandler(w.db.id, { command: ['/bin/sh', '-c', 'sleep 21 & echo started'], rootfs });
    expect(result).toEqual({ exitCode: 0, stdout: 'started', stderr: '' });
    expect(Date.now() - started).toBeLessThan(8_000);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('aborting a function handler rejects at once with ERR_HANDLER_ABORTED and removes its container; the handler sees the signal', async () => {
    const w = await dbWorld();
    const controller = new AbortController();
    let sawAbort = false;
    let handlerId: string | undefined;
    const running = w.runtime.runHandler(
      w.db.id,
      ({ container, signal }) => {
        handlerId = container.id;
        return new Promise<never>((_, reject) =>
          signal.addEventListener('abort', () => {
            sawAbort = true;
            reject(new Error('stopped by the signal'));
          }),
        );
      },
      { signal: controller.signal },
    );
    await until('the handler to start', () => handlerId);
    controller.abort(new Error('the user pressed ^C'));
    const error = await expectCode(running, 'ERR_HANDLER_ABORTED');
    expect(error).toBeInstanceOf(HandlerError);
    expect(sawAbort).toBe(true);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('aborting a function handler that ignores its signal still rejects and removes the container', async () => {
    const w = await dbWorld();
    const controller = new AbortController();
    let handlerId: string | undefined;
    const running = w.runtime.runHandler(
      w.db.id,
      async ({ container }) => {
        handlerId = container.id;
        await sleep(300);
        return 'late';
      },
      { signal: controller.signal },
    );
    await until('the handler to start', () => handlerId);
    controller.abort();
    await expectCode(running, 'ERR_HANDLER_ABORTED');
    await expectNothingLeft(w, [w.db.id]);
    await sleep(400);
  });

  test('aborting a command handler kills the command: ERR_HANDLER_ABORTED', async () => {
    const w = await dbWorld();
    const controller = new AbortController();
    const running = w.runtime.runHandler(w.db.id, { command: ['/bin/sleep', '33'], rootfs: bb, signal: controller.signal });
    await until('the command to run', () => ourProcesses([bb]).some((p) => p.args === '/bin/sleep 33'));
    const started = Date.now();
    controller.abort();
    const error = await expectCode(running, 'ERR_HANDLER_ABORTED');
    expect(error).toBeInstanceOf(HandlerError);
    expect(Date.now() - started).toBeLessThan(10_000);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('a signal aborted before the call: ERR_HANDLER_ABORTED, and no handler container is ever made', async () => {
    const w = await dbWorld();
    const before = await snapshotTree(w.root);
    const signal = AbortSignal.abort();
    let called = false;
    await expectCode(
      w.runtime.runHandler(
        w.db.id,
        () => {
          called = true;
        },
        { signal },
      ),
      'ERR_HANDLER_ABORTED',
    );
    await expectCode(w.runtime.runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, signal }), 'ERR_HANDLER_ABORTED');
    await expectCode(w.runtime.backup(w.db.id, path.join(w.dir, 'never.tar'), { signal }), 'ERR_HANDLER_ABORTED');
    expect(called).toBe(false);
    expect(fs.existsSync(path.join(w.dir, 'never.tar'))).toBe(false);
    expect(await snapshotTree(w.root)).toEqual(before);
    await expectNothingLeft(w, [w.db.id]);
  });
});

describe('command handlers in a busybox rootfs', () => {
  test("read the target's files at their container paths, nested volumes included, and write through rw volumes", async () => {
    const w = await dbWorld();
    const result = await w.runtime.runHandler(w.db.id, {
      command: ['/bin/sh', '-c', 'cat /data/a /data/nested/b /logs/c && echo written > /data/nested/new && ls /data'],
      rootfs: bb,
    });
    expect(result).toEqual({ exitCode: 0, stdout: 'a\nb\nc\na\nnested', stderr: '' });
    expect(await fsp.readFile(path.join(w.hostPath(w.db, '/data/nested'), 'new'), 'utf8')).toBe('written\n');
    await expectNothingLeft(w, [w.db.id]);
  });

  test("the handler's mounts exist only in its private namespace: not in ours while it runs, gone after", async () => {
    const w = await dbWorld();
    const logs = w.hostPath(w.db, '/logs');
    const script = 'cat /data/a /data/nested/b > /logs/ready && while [ ! -e /logs/go ]; do sleep 0.05; done; echo bye';
    const running = w.runtime.runHandler(w.db.id, { command: ['/bin/sh', '-c', script], rootfs: bb });
    // Written by the command through its mounts: they are there, for it.
    await until('the command to read the volumes', () => fs.existsSync(path.join(logs, 'ready')));
    expect(await fsp.readFile(path.join(logs, 'ready'), 'utf8')).toBe('a\nb\n');
    const [command] = ourProcesses([bb]).filter((p) => p.args === `/bin/sh -c ${script}`);
    expect(command).toBeDefined();
    // Seen from the command: its mountinfo (paths relative to its chroot).
    const theirs = fs
      .readFileSync(`/proc/${command!.pid}/mountinfo`, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split(' '))
      .filter((f) => f[4] !== '/')
      .map((f) => [f[4], f[3], (f[5] as string).split(',').filter((o) => ['rw', 'ro', 'nosuid', 'nodev'].includes(o)).join(',')]);
    expect(theirs).toEqual(
      expect.arrayContaining([
        ['/data', w.hostPath(w.db, '/data'), 'rw,nosuid,nodev'],
        ['/logs', w.hostPath(w.db, '/logs'), 'rw,nosuid,nodev'],
        ['/data/nested', w.hostPath(w.db, '/data/nested'), 'rw,nosuid,nodev'],
      ]),
    );
    expect(theirs).toHaveLength(3);
    expect(fs.readlinkSync(`/proc/${command!.pid}/ns/mnt`)).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    // Seen from here: nothing under the handler rootfs, and its directories are empty.
    expect(mountsUnder(bb)).toEqual([]);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(w.hostPath(w.db, '/logs'));
    expect(await fsp.readdir(path.join(bb, 'data'))).toEqual([]);
    await fsp.writeFile(path.join(logs, 'go'), '');
    expect(await running).toEqual({ exitCode: 0, stdout: 'bye', stderr: '' });
    await expectNothingLeft(w, [w.db.id]);
  });

  test("mode 'ro' (and a read-only target) refuse writes with EROFS: ERR_HANDLER_FAILED with the exit code and stderr", async () => {
    const w = await dbWorld();
    const reader = await w.runtime.create({ rootfs: await w.rootfs('reader'), volumesFrom: [`${w.db.id}:ro`] });
    const cases: [string, { mode?: 'ro' | 'rw' }][] = [
      [w.db.id, { mode: 'ro' }],
      [reader.id, {}],
      [reader.id, { mode: 'rw' }],
    ];
    for (const [id, options] of cases) {
      for (const dir of ['/data', '/data/nested', '/logs']) {
        const error = await expectCode(
          w.runtime.runHandler(id, { command: ['/bin/sh', '-c', `test -d ${dir} && touch ${dir}/written`], rootfs: bb, ...options }),
          'ERR_HANDLER_FAILED',
        );
        expect(error).toBeInstanceOf(HandlerError);
        const { exitCode, stderr } = error as HandlerError;
        expect(exitCode).toBe(1);
        expect(stderr).toMatch(/Read-only file system/);
        expect(error.message).toMatch(/exited with code 1/);
        expect(error.message).toContain(id);
      }
    }
    for (const dir of ['/data', '/data/nested', '/logs']) expect(fs.existsSync(path.join(w.hostPath(w.db, dir), 'written'))).toBe(false);
    await expectNothingLeft(w, [w.db.id, reader.id]);
  });

  test('a non-zero exit, a kill and a missing program are ERR_HANDLER_FAILED; stdout and stderr are kept', async () => {
    const w = await dbWorld();
    const exit3 = (await expectCode(
      w.runtime.runHandler(w.db.id, { command: ['/bin/sh', '-c', 'echo out; echo err >&2; exit 3'], rootfs: bb }),
      'ERR_HANDLER_FAILED',
    )) as unknown as HandlerError;
    expect([exit3.exitCode, exit3.stderr]).toEqual([3, 'err']);
    expect(exit3.message).toMatch(/exited with code 3: err/);

    const killed = (await expectCode(
      w.runtime.runHandler(w.db.id, { command: ['/bin/sh', '-c', 'kill -9 $$'], rootfs: bb }),
      'ERR_HANDLER_FAILED',
    )) as unknown as HandlerError;
    expect(killed.exitCode).toBeUndefined();
    expect(killed.message).toMatch(/SIGKILL/);

    const missing = (await expectCode(
      w.runtime.runHandler(w.db.id, { command: ['/no/such/program'], rootfs: bb }),
      'ERR_HANDLER_FAILED',
    )) as unknown as HandlerError;
    expect(missing.exitCode).toBe(127);
    expect(missing.stderr).toMatch(/no\/such\/program/);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('collected output over its 64 MiB cap: ERR_HANDLER_FAILED saying so, not just an exit code', async () => {
    const w = await dbWorld();
    const error = await expectCode(
      w.runtime.runHandler(w.db.id, { command: ['/bin/sh', '-c', `x=xxxxxxxx; for i in 1 2 3 4 5 6 7 8 9; do x=$x$x; done; yes $x | head -c ${70 * MiB}`], rootfs: bb }),
      'ERR_HANDLER_FAILED',
    );
    await expectNothingLeft(w, [w.db.id]);
    expect(error.message).toMatch(/64 MiB|too (much|large|long)|maxBuffer|limit/i);
  });

  test('stdout and stderr go to the given streams as they come (left open); stdin is fed from a Readable, empty without one', async () => {
    const w = await dbWorld();
    const input = randomBytes(8 * MiB);
    const collect = () => {
      const stream = new PassThrough();
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      return { stream, bytes: () => Buffer.concat(chunks) };
    };
    const out = collect();
    const err = collect();
    const result = await w.runtime.runHandler(w.db.id, {
      command: ['/bin/sh', '-c', 'cat; echo to-stderr >&2'],
      rootfs: bb,
      stdin: Readable.from([input.subarray(0, 3 * MiB), input.subarray(3 * MiB)]),
      stdout: out.stream,
      stderr: err.stream,
    });
    expect(result).toEqual({ exitCode: 0, stdout: '', stderr: '' });
    expect(createHash('sha256').update(out.bytes()).digest('hex')).toBe(createHash('sha256').update(input).digest('hex'));
    expect(err.bytes().toString()).toBe('to-stderr\n');
    expect(out.stream.writableEnded).toBe(false);

    // Streamed while the command still runs, not at its end.
    const logs = w.hostPath(w.db, '/logs');
    const live = collect();
    const running = w.runtime.runHandler(w.db.id, {
      command: ['/bin/sh', '-c', 'echo first; while [ ! -e /logs/go ]; do sleep 0.05; done; echo second'],
      rootfs: bb,
      stdout: live.stream,
    });
    await until('the first line', () => live.bytes().toString() === 'first\n');
    await fsp.writeFile(path.join(logs, 'go'), '');
    await running;
    expect(live.bytes().toString()).toBe('first\nsecond\n');

    // Without stdin, a command reading it sees its end at once.
    expect(await w.runtime.runHandler(w.db.id, { command: ['/bin/cat'], rootfs: bb, timeout: 20_000 })).toEqual({
      exitCode: 0,
      stdout: '',
      stderr: '',
    });
    await expectNothingLeft(w, [w.db.id]);
  });
});

// ---------------------------------------------------------------------------------------
// Backup and restore.

const SPARSE_SIZE = 160 * MiB;
const SPARSE_CHUNKS = [0, 33 * MiB + 5, 100 * MiB, SPARSE_SIZE - 64 * 1024];

/**
 * Fills the volumes of a "db" with what a round trip must keep: nested directories,
 * symlinks (relative, absolute, dangling, owned by another uid), files owned by other
 * uids and gids, setuid/setgid/sticky modes, 0600 and 0400 files, a 0-byte file, a
 * sparse file over 100 MB, hard links, odd names, set modification times.
 */
async function populate(data: string, nested: string, www: string): Promise<void> {
  const at = (...p: string[]) => path.join(data, ...p);
  await fsp.mkdir(at('a/b/c'), { recursive: true });
  await fsp.writeFile(at('a/b/c/deep.txt'), 'deep\n');
  await fsp.writeFile(at('a/b/sibling.bin'), randomBytes(300_000));
  await fsp.symlink('a/b/c/deep.txt', at('rel-link'));
  await fsp.symlink('b/c', at('a/dir-link'));
  await fsp.symlink('../../rel-link', at('a/b/up-link'));
  await fsp.symlink('/etc/hostname', at('abs-link'));
  await fsp.lchown(at('abs-link'), 4321, 8765);
  await fsp.symlink('nowhere/at/all', at('dangling'));
  await fsp.symlink('/var/lib/postgres/gone', at('abs-dangling'));

  await fsp.writeFile(at('owned.txt'), 'owned by 1234:5678\n');
  await fsp.chown(at('owned.txt'), 1234, 5678);
  await fsp.chmod(at('owned.txt'), 0o640);
  await fsp.writeFile(at('unnamed-ids'), 'no such user\n');
  await fsp.chown(at('unnamed-ids'), 123456, 654321);
  await fsp.writeFile(at('secret'), 'only root\n', { mode: 0o600 });
  await fsp.chmod(at('secret'), 0o600);
  await fsp.writeFile(at('empty'), '');
  await fsp.writeFile(at('setuid-tool'), '#!/bin/sh\n');
  await fsp.chmod(at('setuid-tool'), 0o4755);
  await fsp.mkdir(at('shared'));
  await fsp.chown(at('shared'), 0, 1001);
  await fsp.chmod(at('shared'), 0o2775);
  await fsp.writeFile(at('shared/f'), 'group file\n');
  await fsp.chown(at('shared/f'), 1000, 1001);
  await fsp.chmod(at('shared/f'), 0o664);
  await fsp.mkdir(at('private'));
  await fsp.writeFile(at('private/x'), 'read-only, in a 0700 directory\n');
  await fsp.chmod(at('private/x'), 0o400);
  await fsp.chown(at('private/x'), 2000, 2000);
  await fsp.chown(at('private'), 2000, 2000);
  await fsp.chmod(at('private'), 0o700);
  await fsp.writeFile(at('hard-a'), 'linked twice\n');
  await fsp.link(at('hard-a'), at('a/hard-b'));
  await fsp.writeFile(at('name with spaces, tab\tand ünïcödé'), 'odd name\n');
  await fsp.utimes(at('owned.txt'), new Date('2001-02-03T04:05:06.789Z'), new Date('2001-02-03T04:05:06.789Z'));

  const sparse = await fsp.open(at('sparse.img'), 'w');
  await sparse.truncate(SPARSE_SIZE);
  for (const offset of SPARSE_CHUNKS) await sparse.write(randomBytes(64 * 1024), 0, 64 * 1024, offset);
  await sparse.close();

  await fsp.chown(data, 999, 999);
  await fsp.chmod(data, 0o750);

  await fsp.writeFile(path.join(nested, 'inner.txt'), 'inside the nested volume\n');
  await fsp.mkdir(path.join(nested, 'deeper'));
  await fsp.writeFile(path.join(nested, 'deeper/x.json'), '{"x":1}\n');
  await fsp.chmod(nested, 0o1777);

  await fsp.mkdir(path.join(www, 'assets'));
  await fsp.writeFile(path.join(www, 'index.html'), '<h1>hi</h1>\n');
  await fsp.writeFile(path.join(www, 'assets/app.js'), 'console.log(1)\n');
  await fsp.chown(path.join(www, 'assets'), 33, 33);
}

interface Entry {
  type: 'file' | 'dir' | 'link' | 'other';
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  link?: string;
  mtimeMs?: number;
  /** For the second and later names of a hard-linked file: its first name. */
  sameFileAs?: string;
}

/** Every entry under `dir` (`.` for itself) with what a restore must reproduce. */
async function describeTree(dir: string): Promise<Record<string, Entry>> {
  const out: Record<string, Entry> = {};
  const inodes = new Map<number, string>();
  const hash = (file: string) =>
    new Promise<string>((resolve, reject) => {
      const h = createHash('sha256');
      fs.createReadStream(file).on('data', (c) => h.update(c)).on('error', reject).on('end', () => resolve(h.digest('hex')));
    });
  async function visit(full: string, rel: string): Promise<void> {
    const stat = await fsp.lstat(full);
    const meta = { mode: (stat.mode & 0o7777).toString(8).padStart(4, '0'), uid: stat.uid, gid: stat.gid };
    if (stat.isSymbolicLink()) out[rel] = { type: 'link', ...meta, link: await fsp.readlink(full), size: stat.size };
    else if (stat.isFile()) {
      const first = inodes.get(stat.ino);
      if (first === undefined) inodes.set(stat.ino, rel);
      out[rel] = {
        type: 'file',
        ...meta,
        size: stat.size,
        sha256: await hash(full),
        mtimeMs: Math.trunc(stat.mtimeMs),
        ...(first === undefined ? {} : { sameFileAs: first }),
      };
    } else if (stat.isDirectory()) {
      out[rel] = { type: 'dir', ...meta };
      for (const name of (await fsp.readdir(full)).sort()) await visit(path.join(full, name), rel === '.' ? name : `${rel}/${name}`);
    } else out[rel] = { type: 'other', ...meta };
  }
  await visit(dir, '.');
  return out;
}

function expectProgress(events: Progress[], finalBytes: number): void {
  expect(events.length).toBeGreaterThan(1);
  for (let i = 1; i < events.length; i++) expect(events[i]!.bytesDone).toBeGreaterThanOrEqual(events[i - 1]!.bytesDone);
  for (const e of events) expect(e.bytesTotal).toBeGreaterThanOrEqual(e.bytesDone);
  expect(events.at(-1)).toEqual({ bytesDone: finalBytes, bytesTotal: finalBytes });
}

function tarList(archive: string): string[] {
  return execFileSync('tar', ['--list', `--file=${archive}`], { encoding: 'utf8', maxBuffer: 64 * MiB }).split('\n').filter(Boolean);
}

function tarManifest(archive: string): unknown {
  return JSON.parse(execFileSync('tar', ['--extract', '--to-stdout', `--file=${archive}`, MANIFEST], { encoding: 'utf8' }));
}

describe('backup → restore', () => {
  test('reproduces every file of every volume: content, mode, owner, link target, hard links, sparseness', async () => {
    const w = await world();
    const db = await w.runtime.create({ rootfs: await w.rootfs('db'), volumes: ['/data', '/data/nested', '/srv/www'] });
    await populate(w.hostPath(db, '/data'), w.hostPath(db, '/data/nested'), w.hostPath(db, '/srv/www'));
    const sparseBlocks = (file: string) => fs.statSync(file).blocks * 512;
    // Precondition: the file system keeps holes, or the check after restore means nothing.
    expect(sparseBlocks(path.join(w.hostPath(db, '/data'), 'sparse.img'))).toBeLessThan(2 * MiB);
    // A running database: its volumes are mounted while the backup reads them.
    await w.runtime.mount(db.id);

    await fsp.mkdir(path.join(w.dir, 'backups'));
    const archive = path.join(w.dir, 'backups', 'db.tar');
    const backupEvents: Progress[] = [];
    const before = Date.now();
    const { warnings, ...manifest } = await w.runtime.backup(db.id, archive, { onProgress: (p) => backupEvents.push({ ...p }) });
    expect(warnings).toEqual([]);
    const after = Date.now();
    const archiveSize = fs.statSync(archive).size;
    expect(await fsp.readdir(path.join(w.dir, 'backups'))).toEqual(['db.tar']);
    // Sparse data is archived as data, holes are not.
    expect(archiveSize).toBeLessThan(10 * MiB);

    expect(manifest).toEqual({
      format: 'container-volumes-backup',
      version: 1,
      createdAt: expect.any(String),
      containerId: db.id,
      volumes: expect.arrayContaining(db.volumes.map((v) => ({ path: v.path, mode: expect.any(String), volumeId: v.volumeId }))),
    });
    expect(manifest.volumes).toHaveLength(3);
    expect(Date.parse(manifest.createdAt)).toBeGreaterThanOrEqual(before - 1000);
    expect(Date.parse(manifest.createdAt)).toBeLessThanOrEqual(after);
    expect(tarManifest(archive)).toEqual(manifest);
    const members = tarList(archive);
    expect(members[0]).toBe(MANIFEST);
    for (const m of members.slice(1)) expect(m).toMatch(/^(data|srv\/www)\//);
    expect(members).toEqual(expect.arrayContaining(['data/', 'data/nested/', 'data/nested/inner.txt', 'srv/www/', 'srv/www/index.html']));
    expectProgress(backupEvents, archiveSize);

    const original: Record<string, Record<string, Entry>> = {};
    for (const v of db.volumes) original[v.path] = await describeTree(w.hostPath(db, v.path));

    const restoreEvents: Progress[] = [];
    const rootfs = await w.rootfs('restored');
    const restored = await w.runtime.restore(archive, { rootfs, onProgress: (p) => restoreEvents.push({ ...p }) });
    expectProgress(restoreEvents, archiveSize);
    expect(restored.rootfs).toBe(rootfs);
    expect(restored.mounted).toBe(false);
    expect(restored.volumes.map((v) => [v.path, v.mode, v.origin]).sort()).toEqual(
      db.volumes.map((v) => [v.path, 'rw', 'created']).sort(),
    );
    for (const v of restored.volumes) expect(db.volumes.map((d) => d.volumeId)).not.toContain(v.volumeId);

    for (const v of db.volumes) {
      const copy = await describeTree(w.hostPath(restored, v.path));
      expect({ path: v.path, tree: copy }).toEqual({ path: v.path, tree: original[v.path] });
    }
    // Spot checks, so that a describeTree that saw nothing cannot pass.
    const data = original['/data']!;
    expect(data['.']).toMatchObject({ mode: '0750', uid: 999, gid: 999 });
    expect(data['abs-link']).toMatchObject({ link: '/etc/hostname', uid: 4321, gid: 8765 });
    expect(data['hard-a']).toMatchObject({ sameFileAs: 'a/hard-b' });
    expect(data['shared']).toMatchObject({ mode: '2775', gid: 1001 });
    expect(data['setuid-tool']).toMatchObject({ mode: '4755' });
    expect(data['unnamed-ids']).toMatchObject({ uid: 123456, gid: 654321 });
    expect(data['sparse.img']).toMatchObject({ size: SPARSE_SIZE });
    expect(original['/data/nested']!['.']).toMatchObject({ mode: '1777' });
    expect(sparseBlocks(path.join(w.hostPath(restored, '/data'), 'sparse.img'))).toBeLessThan(2 * MiB);

    // Seen the way the container will see it: the nested volume inside its parent.
    await w.runtime.mount(restored.id);
    expect(await fsp.readFile(path.join(rootfs, 'data/nested/inner.txt'), 'utf8')).toBe('inside the nested volume\n');
    expect(await fsp.readFile(path.join(rootfs, 'data/rel-link'), 'utf8')).toBe('deep\n');
    for (const c of [restored, db]) await w.runtime.unmount(c.id);
    await expectNothingLeft(w, [db.id, restored.id]);

    // The manifest records the container's modes, not those of the read-only share the backup reads through.
    expect(Object.fromEntries(manifest.volumes.map((v) => [v.path, v.mode]))).toEqual({ '/data': 'rw', '/data/nested': 'rw', '/srv/www': 'rw' });
  });

  test('a share :ro is backed up with its modes in the manifest; the restored volumes are read-write and the target own', async () => {
    const w = await dbWorld();
    const reader = await w.runtime.create({ rootfs: await w.rootfs('reader'), volumesFrom: [`${w.db.id}:ro`] });
    const archive = path.join(w.dir, 'reader.tar');
    const manifest = await w.runtime.backup(reader.id, archive);
    expect(manifest.containerId).toBe(reader.id);
    expect(manifest.volumes.map((v) => v.mode)).toEqual(['ro', 'ro', 'ro']);
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    expect(restored.volumes.map((v) => [v.path, v.mode, v.origin]).sort()).toEqual([
      ['/data', 'rw', 'created'],
      ['/data/nested', 'rw', 'created'],
      ['/logs', 'rw', 'created'],
    ]);
    expect(await fsp.readFile(path.join(w.hostPath(restored, '/data/nested'), 'b'), 'utf8')).toBe('b\n');
    await expectNothingLeft(w, [w.db.id, reader.id, restored.id]);
  });

  test('a container without volumes backs up to a manifest alone, and restores to a container without volumes', async () => {
    const w = await world();
    const bare = await w.runtime.create({ rootfs: await w.rootfs('bare') });
    const archive = path.join(w.dir, 'bare.tar');
    const manifest = await w.runtime.backup(bare.id, archive);
    expect(manifest.volumes).toEqual([]);
    expect(tarList(archive)).toEqual([MANIFEST]);
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    expect(restored.volumes).toEqual([]);
    await expectNothingLeft(w, [bare.id, restored.id]);
  });

  test('thirty restores of one archive in a row all succeed (no race between tar exiting and its stdin closing)', async () => {
    const w = await dbWorld();
    const archive = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, archive);
    const failures: string[] = [];
    for (let i = 0; i < 30; i++) {
      try {
        const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs(`restored-${i}`) });
        expect(await fsp.readFile(path.join(w.hostPath(restored, '/data/nested'), 'b'), 'utf8')).toBe('b\n');
        await w.runtime.remove(restored.id, { volumes: true });
      } catch (error) {
        failures.push(`round ${i}: ${(error as Error).message}`);
      }
    }
    await expectNothingLeft(w, [w.db.id]);
    expect(failures).toEqual([]);
  });

  test('an archive with data after its end (padding) restores: tar stops reading there, which is no failure', async () => {
    const w = await dbWorld();
    const archive = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, archive);
    await fsp.appendFile(archive, Buffer.alloc(8 * MiB, 'x'));
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    expect(await fsp.readFile(path.join(w.hostPath(restored, '/data/nested'), 'b'), 'utf8')).toBe('b\n');
    await expectNothingLeft(w, [w.db.id, restored.id]);
  });

  test('writes over an existing destination only once complete', async () => {
    const w = await dbWorld();
    const archive = path.join(w.dir, 'db.tar');
    await fsp.writeFile(archive, 'the previous backup');
    const seenDuring: string[] = [];
    await w.runtime.backup(w.db.id, archive, {
      onProgress: () => {
        if (seenDuring.length === 0) seenDuring.push(fs.readFileSync(archive, 'utf8'));
      },
    });
    expect(seenDuring).toEqual(['the previous backup']);
    expect(tarList(archive)[0]).toBe(MANIFEST);
    await expectNothingLeft(w, [w.db.id]);
  });
});

/** One tar member, ustar format, written by hand so that an archive can hold what GNU tar would not write. */
function tarMember(name: string, options: { type?: '0' | '2' | '5' | '1'; body?: string | Buffer; linkname?: string; mode?: number } = {}): Buffer {
  const body = Buffer.from(options.body ?? '');
  const header = Buffer.alloc(512);
  const octal = (value: number, offset: number, length: number) => header.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'ascii');
  header.write(name, 0, 100, 'utf8');
  octal(options.mode ?? 0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  octal(body.length, 124, 12);
  octal(1_700_000_000, 136, 12);
  header.fill(' ', 148, 156);
  header.write(options.type ?? '0', 156, 1, 'ascii');
  header.write(options.linkname ?? '', 157, 100, 'utf8');
  header.write('ustar\0', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return Buffer.concat([header, body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

function tarArchive(...members: Buffer[]): Buffer {
  return Buffer.concat([...members, Buffer.alloc(1024)]);
}

function manifestOf(volumes: unknown, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ format: 'container-volumes-backup', version: 1, createdAt: new Date().toISOString(), containerId: randomUUID(), volumes, ...extra });
}

describe('restore refuses what is not a backup, and leaves nothing behind', () => {
  const vol = (p: unknown, mode: unknown = 'rw', volumeId: unknown = randomUUID()) => ({ path: p, mode, volumeId });
  const cases: [string, () => Buffer][] = [
    ['random bytes', () => randomBytes(64 * 1024)],
    ['an empty file', () => Buffer.alloc(0)],
    ['a tar without a manifest', () => tarArchive(tarMember('data/', { type: '5', mode: 0o755 }), tarMember('data/x', { body: 'x' }))],
    ['a manifest that is not JSON', () => tarArchive(tarMember(MANIFEST, { body: '{"format":' }))],
    ['a manifest of another format', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([], { format: 'docker-save' }) }))],
    ['a manifest of another version', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([], { version: 2 }) }))],
    ['a manifest without a volume list', () => tarArchive(tarMember(MANIFEST, { body: manifestOf(undefined) }))],
    ['a manifest path with ../', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/data/../../etc')]) }))],
    ['a manifest path of ..', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/..')]) }))],
    ['a relative manifest path', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('data')]) }))],
    ['a manifest path of /', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/')]) }))],
    ['a manifest path not in clean form', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/data/')]) }))],
    ['a manifest path with NUL', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/da\u0000ta')]) }))],
    ['a manifest path that is not a string', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol(42)]) }))],
    ['a bad mode', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/data', 'rx')]) }))],
    ['a missing mode', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([{ path: '/data', volumeId: randomUUID() }]) }))],
    ['a bad volume id', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/data', 'rw', '../../x')]) }))],
    ['two volumes at one path', () => tarArchive(tarMember(MANIFEST, { body: manifestOf([vol('/data'), vol('/data')]) }))],
    ['a volume entry that is not an object', () => tarArchive(tarMember(MANIFEST, { body: manifestOf(['/data']) }))],
  ];

  test.each(cases)('%s: ERR_INVALID_ARCHIVE', async (_name, make) => {
    const w = await dbWorld();
    const archive = path.join(w.dir, 'bad.tar');
    await fsp.writeFile(archive, make());
    const rootfs = await w.rootfs('restored');
    const before = await snapshotTree(w.dir);
    const error = await expectCode(w.runtime.restore(archive, { rootfs }), 'ERR_INVALID_ARCHIVE');
    expect(error.message).toContain(archive);
    expect(await snapshotTree(w.dir)).toEqual(before);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('a compressed backup (gzip): a coded error, and nothing is left', async () => {
    const w = await dbWorld();
    const archive = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, archive);
    execFileSync('gzip', [archive]);
    const volumesBefore = (await fsp.readdir(path.join(w.root, 'volumes'))).sort();
    const error = await expectCode(w.runtime.restore(`${archive}.gz`, { rootfs: await w.rootfs('restored') }), 'ERR_INVALID_ARCHIVE');
    expect(error.message).toContain(`${archive}.gz`);
    expect(error.message).toMatch(/compressed \(gzip\)/);
    expect((await fsp.readdir(path.join(w.root, 'volumes'))).sort()).toEqual(volumesBefore);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('a truncated archive: a coded error, and the half-restored container and its volumes are removed', async () => {
    const w = await dbWorld();
    await fsp.writeFile(path.join(w.hostPath(w.db, '/data'), 'big'), randomBytes(4 * MiB));
    const archive = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, archive);
    await fsp.truncate(archive, 2 * MiB);
    const volumesBefore = (await w.runtime.volumes.list()).map((v) => v.id).sort();
    const error = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ContainerVolumesError);
    expect((error as ContainerVolumesError).code).toMatch(/^ERR_(HANDLER_FAILED|INVALID_ARCHIVE)$/);
    expect((await w.runtime.volumes.list()).map((v) => v.id).sort()).toEqual(volumesBefore);
    expect((await fsp.readdir(path.join(w.root, 'volumes'))).sort()).toEqual(volumesBefore);
    await expectNothingLeft(w, [w.db.id]);
  });

  test("members outside the manifest's paths, '..' and absolute names, and symlinks out of a volume write nothing outside it", async () => {
    const w = await dbWorld();
    const canary = path.join(w.dir, 'canary');
    await fsp.mkdir(canary);
    await fsp.writeFile(path.join(canary, 'file'), 'untouched');
    const canaryBefore = await snapshotTree(canary);
    const depth = '../'.repeat(20);
    const archive = path.join(w.dir, 'hostile.tar');
    await fsp.writeFile(
      archive,
      tarArchive(
        tarMember(MANIFEST, { body: manifestOf([vol('/data')]) }),
        tarMember('data/', { type: '5', mode: 0o755 }),
        tarMember('data/ok.txt', { body: 'ok' }),
        tarMember('etc/evil-outside-manifest', { body: 'evil' }),
        tarMember(`${canary.slice(1)}/evil-absolute`, { body: 'evil' }),
        tarMember(`/${canary.slice(1)}/evil-absolute-2`, { body: 'evil' }),
        tarMember(`data/${depth}${canary.slice(1)}/evil-dotdot`, { body: 'evil' }),
        tarMember('data/abs-link', { type: '2', linkname: canary }),
        tarMember('data/abs-link/evil-through-abs-link', { body: 'evil' }),
        tarMember('data/rel-link', { type: '2', linkname: `${depth}${canary.slice(1)}` }),
        tarMember('data/rel-link/evil-through-rel-link', { body: 'evil' }),
        tarMember('data/hard-out', { type: '1', linkname: `${canary}/file` }),
      ),
    );
    await checkNothingEscapes(w, archive, canary, canaryBefore);
  });

  test('a volume root replaced by a symlink out of the volume writes nothing outside it', async () => {
    const w = await dbWorld();
    const canary = path.join(w.dir, 'canary');
    await fsp.mkdir(canary);
    const canaryBefore = await snapshotTree(canary);
    const archive = path.join(w.dir, 'hostile.tar');
    await fsp.writeFile(
      archive,
      tarArchive(
        tarMember(MANIFEST, { body: manifestOf([vol('/data'), vol('/data/nested')]) }),
        tarMember('data', { type: '2', linkname: canary }),
        tarMember('data/evil-through-volume-root', { body: 'evil' }),
        tarMember('data/nested', { type: '2', linkname: canary }),
        tarMember('data/nested/evil-through-nested-root', { body: 'evil' }),
      ),
    );
    await checkNothingEscapes(w, archive, canary, canaryBefore);
  });

  /** Restores a hostile `archive`: whether it succeeds or not, nothing lands outside the new volumes, and a failure leaves nothing. */
  async function checkNothingEscapes(w: Awaited<ReturnType<typeof dbWorld>>, archive: string, canary: string, canaryBefore: Record<string, string>) {
    const result = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') }).then(
      (restored) => ({ restored }),
      (error: unknown) => ({ error }),
    );
    expect(await snapshotTree(canary)).toEqual(canaryBefore);
    const evil = execFileSync('find', [base, '-name', 'evil*'], { encoding: 'utf8' });
    expect(evil).toBe('');
    if ('error' in result) {
      expect(result.error).toBeInstanceOf(ContainerVolumesError);
      await expectNothingLeft(w, [w.db.id]);
    } else {
      await expectNothingLeft(w, [w.db.id, result.restored.id]);
    }
  }
});

describe('a backup that fails midway leaves no partial archive and no handler container', () => {
  test('the destination directory is missing', async () => {
    const w = await dbWorld();
    const destination = path.join(w.dir, 'no-such-dir', 'db.tar');
    const before = await snapshotTree(w.root);
    const error = await expectCode(w.runtime.backup(w.db.id, destination), 'ERR_INVALID_ARGUMENT');
    expect(error.message).toContain(destination);
    expect(fs.existsSync(path.dirname(destination))).toBe(false);
    // Refused before any handler container was made.
    expect(await snapshotTree(w.root)).toEqual(before);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('the destination file system fills up (ENOSPC)', async () => {
    const w = await dbWorld();
    await fsp.writeFile(path.join(w.hostPath(w.db, '/data'), 'big'), randomBytes(4 * MiB));
    const small = path.join(w.dir, 'small');
    await fsp.mkdir(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
    let error: unknown;
    try {
      error = await w.runtime.backup(w.db.id, path.join(small, 'db.tar')).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ContainerVolumesError);
      expect((error as ContainerVolumesError).code).toMatch(/^ERR_/);
      expect(await fsp.readdir(small)).toEqual([]);
    } finally {
      execFileSync('umount', [small]);
    }
    await expectNothingLeft(w, [w.db.id]);
    // The cause is the full file system, not tar's broken pipe.
    expect(String((error as Error).message)).toMatch(/ENOSPC|no space/i);
  });

  test('aborted while tar writes', async () => {
    const w = await dbWorld();
    await fsp.writeFile(path.join(w.hostPath(w.db, '/data'), 'big'), randomBytes(64 * MiB));
    const archive = path.join(w.dir, 'db.tar');
    const controller = new AbortController();
    const error = await expectCode(w.runtime.backup(w.db.id, archive, { signal: controller.signal, onProgress: () => controller.abort() }), 'ERR_HANDLER_ABORTED');
    expect(error).toBeInstanceOf(HandlerError);
    expect(await fsp.readdir(w.dir)).not.toContain('db.tar.partial');
    expect(fs.existsSync(archive)).toBe(false);
    await expectNothingLeft(w, [w.db.id]);
  });

  test('a restore aborted while tar extracts removes the new container and its volumes', async () => {
    const w = await dbWorld();
    await fsp.writeFile(path.join(w.hostPath(w.db, '/data'), 'big'), randomBytes(64 * MiB));
    const archive = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, archive);
    const volumesBefore = (await fsp.readdir(path.join(w.root, 'volumes'))).sort();
    const controller = new AbortController();
    await expectCode(
      w.runtime.restore(archive, { rootfs: await w.rootfs('restored'), signal: controller.signal, onProgress: () => controller.abort() }),
      'ERR_HANDLER_ABORTED',
    );
    expect((await fsp.readdir(path.join(w.root, 'volumes'))).sort()).toEqual(volumesBefore);
    await expectNothingLeft(w, [w.db.id]);
  });
});

// ---------------------------------------------------------------------------------------
// Bad input: a coded error, nothing changed on disk.

describe('bad input to runHandler, backup and restore: a coded error and an unchanged store', () => {
  type Call = (w: Awaited<ReturnType<typeof dbWorld>>, archive: string) => Promise<unknown>;
  const fn = () => 'ran';
  // Typed loosely on purpose: these are the calls a JavaScript caller could make.
  const anyRuntime = (w: World) => w.runtime as unknown as Record<'runHandler' | 'backup' | 'restore', (...args: unknown[]) => Promise<unknown>>;
  const cases: [string, string, Call][] = [
    ['runHandler: handler is a number', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, 42)],
    ['runHandler: handler is a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, 'tar cf -')],
    ['runHandler: handler is null', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, null)],
    ['runHandler: no handler', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id)],
    ['runHandler: handler is an array', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, ['/bin/true'])],
    ['runHandler: options not an object', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, fn, 'ro')],
    ['runHandler: bad mode', 'ERR_INVALID_MODE', (w) => anyRuntime(w).runHandler(w.db.id, fn, { mode: 'rx' })],
    ['runHandler: mode in upper case', 'ERR_INVALID_MODE', (w) => anyRuntime(w).runHandler(w.db.id, fn, { mode: 'RO' })],
    ['runHandler: signal not an AbortSignal', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, fn, { signal: { aborted: false } })],
    ['runHandler: unknown option', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, fn, { mode: 'ro', timeout: 5 })],
    ['runHandler: a container id that names nothing', 'ERR_CONTAINER_NOT_FOUND', (w) => anyRuntime(w).runHandler('db', fn)],
    ['runHandler: container id with ../', 'ERR_CONTAINER_NOT_FOUND', (w) => anyRuntime(w).runHandler(`../${w.db.id}`, fn)],
    ['runHandler: container id not a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(42, fn)],
    ['runHandler: unknown container', 'ERR_CONTAINER_NOT_FOUND', (w) => w.runtime.runHandler(randomUUID(), fn)],
    ['command: empty command', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: [], rootfs: bb })],
    ['command: command is a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: '/bin/true', rootfs: bb })],
    ['command: no command', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { rootfs: bb })],
    ['command: an argument with NUL', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/echo', 'a\0b'], rootfs: bb })],
    ['command: an argument not a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/echo', 1], rootfs: bb })],
    ['command: relative rootfs', 'ERR_INVALID_ROOTFS', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: 'busybox-rootfs' })],
    ['command: no rootfs', 'ERR_INVALID_ROOTFS', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'] })],
    ['command: missing rootfs', 'ERR_INVALID_ROOTFS', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: path.join(w.dir, 'nope') })],
    ['command: rootfs is /', 'ERR_INVALID_ROOTFS', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: '/' })],
    ['command: rootfs inside the store', 'ERR_INVALID_ROOTFS', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: path.join(w.root, 'volumes') })],
    ['command: rootfs is a file', 'ERR_INVALID_ROOTFS', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: path.join(bb, 'bin/busybox') })],
    ['command: timeout 0', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: 0 })],
    ['command: negative timeout', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: -5 })],
    ['command: fractional timeout', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: 1.5 })],
    ['command: timeout NaN', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: Number.NaN })],
    ['command: timeout Infinity', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: Infinity })],
    ['command: timeout over 2^31-1 ms (setTimeout would fire at once)', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: 2 ** 31 })],
    ['command: timeout a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, timeout: '100' })],
    ['command: bad mode', 'ERR_INVALID_MODE', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, mode: 'rx' })],
    ['command: bad signal', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, signal: 'stop' })],
    ['command: stdin not a stream', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/cat'], rootfs: bb, stdin: 'text' })],
    ['command: stdout not a stream', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, stdout: 1 })],
    ['command: unknown key', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb, cwd: '/data' })],
    ['command: with a second options argument', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).runHandler(w.db.id, { command: ['/bin/true'], rootfs: bb }, { mode: 'ro' })],
    ['command: unknown container', 'ERR_CONTAINER_NOT_FOUND', (w) => w.runtime.runHandler(randomUUID(), { command: ['/bin/true'], rootfs: bb })],
    ['backup: relative destination', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, 'db.tar')],
    ['backup: empty destination', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, '')],
    ['backup: destination not a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, 42)],
    ['backup: destination with NUL', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, path.join(w.dir, 'db\0.tar'))],
    ['backup: options not an object', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, path.join(w.dir, 'db.tar'), 'fast')],
    ['backup: unknown option', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, path.join(w.dir, 'db.tar'), { gzip: true })],
    ['backup: onProgress not a function', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, path.join(w.dir, 'db.tar'), { onProgress: true })],
    ['backup: bad signal', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).backup(w.db.id, path.join(w.dir, 'db.tar'), { signal: {} })],
    ['backup: a container id that names nothing', 'ERR_CONTAINER_NOT_FOUND', (w) => anyRuntime(w).backup('db', path.join(w.dir, 'db.tar'))],
    ['backup: unknown container', 'ERR_CONTAINER_NOT_FOUND', (w) => w.runtime.backup(randomUUID(), path.join(w.dir, 'db.tar'))],
    ['restore: relative archive', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).restore('db.tar', { rootfs: path.join(w.dir, 'rootfs', 'db') })],
    ['restore: archive not a string', 'ERR_INVALID_ARGUMENT', (w) => anyRuntime(w).restore(undefined, { rootfs: path.join(w.dir, 'rootfs', 'db') })],
    ['restore: no options', 'ERR_INVALID_ROOTFS', (w, archive) => anyRuntime(w).restore(archive)],
    ['restore: relative rootfs', 'ERR_INVALID_ROOTFS', (w, archive) => anyRuntime(w).restore(archive, { rootfs: 'rootfs/new' })],
    ['restore: missing rootfs', 'ERR_INVALID_ROOTFS', (w, archive) => anyRuntime(w).restore(archive, { rootfs: path.join(w.dir, 'nope') })],
    ['restore: rootfs is /', 'ERR_INVALID_ROOTFS', (w, archive) => anyRuntime(w).restore(archive, { rootfs: '/' })],
    ['restore: rootfs inside the store', 'ERR_INVALID_ROOTFS', (w, archive) => anyRuntime(w).restore(archive, { rootfs: w.root })],
    ['restore: options not an object', 'ERR_INVALID_ARGUMENT', (w, archive) => anyRuntime(w).restore(archive, 'rootfs')],
    ['restore: unknown option', 'ERR_INVALID_ARGUMENT', (w, archive) => anyRuntime(w).restore(archive, { rootfs: path.join(w.dir, 'rootfs', 'db'), mode: 'ro' })],
    ['restore: onProgress not a function', 'ERR_INVALID_ARGUMENT', (w, archive) => anyRuntime(w).restore(archive, { rootfs: path.join(w.dir, 'rootfs', 'db'), onProgress: 'bar' })],
    ['restore: bad signal', 'ERR_INVALID_ARGUMENT', (w, archive) => anyRuntime(w).restore(archive, { rootfs: path.join(w.dir, 'rootfs', 'db'), signal: 1 })],
    ['restore: missing archive', 'ERR_INVALID_ARCHIVE', (w) => anyRuntime(w).restore(path.join(w.dir, 'nope.tar'), { rootfs: path.join(w.dir, 'rootfs', 'db') })],
    ['restore: archive is a directory', 'ERR_INVALID_ARCHIVE', (w) => anyRuntime(w).restore(w.dir, { rootfs: path.join(w.dir, 'rootfs', 'db') })],
  ];
  test.each(cases)('%s: %s', async (_name, code, call) => {
    const w = await dbWorld();
    const archive = path.join(w.dir, 'good.tar');
    await w.runtime.backup(w.db.id, archive);
    const before = await snapshotTree(w.dir);
    const error = await expectCode(call(w, archive), code);
    expect(error).toBeInstanceOf(ContainerVolumesError);
    expect(await snapshotTree(w.dir)).toEqual(before);
    await expectNothingLeft(w, [w.db.id]);
  });
});

// ---------------------------------------------------------------------------------------
// Throughput: printed, never asserted (SPEC §6: timings are the bench's business).

describe('throughput', () => {
  const megabytes = Number(process.env.CONTAINER_VOLUMES_BENCH_BACKUP_MB ?? 128);

  test(`backup and restore of a ${megabytes} MB volume of non-sparse data (MB/s printed)`, async () => {
    const w = await world();
    const db = await w.runtime.create({ rootfs: await w.rootfs('db'), volumes: ['/data'] });
    const file = path.join(w.hostPath(db, '/data'), 'payload.bin');
    const chunk = 4 * MiB;
    const written = createHash('sha256');
    const out = await fsp.open(file, 'w');
    for (let done = 0; done < megabytes * MiB; done += chunk) {
      const bytes = randomBytes(Math.min(chunk, megabytes * MiB - done));
      written.update(bytes);
      await out.write(bytes);
    }
    await out.sync();
    await out.close();
    const digest = written.digest('hex');

    const archive = path.join(w.dir, 'db.tar');
    const mbps = (bytes: number, ms: number) => (bytes / MiB / (ms / 1000)).toFixed(1);
    let started = performance.now();
    await w.runtime.backup(db.id, archive);
    execFileSync('sync', ['-f', archive]);
    const backupMs = performance.now() - started;
    started = performance.now();
    const restored = await w.runtime.restore(archive, { rootfs: await w.rootfs('restored') });
    const copy = path.join(w.hostPath(restored, '/data'), 'payload.bin');
    execFileSync('sync', ['-f', copy]);
    const restoreMs = performance.now() - started;
    const bytes = megabytes * MiB;
    console.log(
      [
        `backup/restore throughput, ${megabytes} MB volume (${(fs.statSync(archive).size / MiB).toFixed(1)} MB archive), including fsync:`,
        `  backup:  ${(backupMs / 1000).toFixed(2)} s, ${mbps(bytes, backupMs)} MB/s`,
        `  restore: ${(restoreMs / 1000).toFixed(2)} s, ${mbps(bytes, restoreMs)} MB/s`,
      ].join('\n'),
    );
    const check = createHash('sha256');
    for await (const c of fs.createReadStream(copy)) check.update(c as Buffer);
    expect(check.digest('hex')).toBe(digest);
    await fsp.rm(archive);
    await expectNothingLeft(w, [db.id, restored.id]);
  }, 600_000);
});

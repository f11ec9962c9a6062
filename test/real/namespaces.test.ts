import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, type ContainerInfo } from '../../src/index.js';
import { cleanupTemp, expectCode, NOTHING_RECOVERED as NOTHING, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { killIfAlive, onJsonLines } from '../helpers/processes.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * One store, several mount namespaces. Mounts made in one namespace are invisible in the
 * others, so a process must never remake, detach or delete from under another
 * namespace's mounts. Each worker (test/helpers/namespace-worker.mjs) runs in a private
 * mount namespace of its own; this test process is in yet another.
 */

const WORKER = fileURLToPath(new URL('../helpers/namespace-worker.mjs', import.meta.url));

interface Worker {
  namespace: string;
  pid: number;
  run<T = unknown>(command: Record<string, unknown>): Promise<T>;
  exited: Promise<void>;
}

let base: string;
const children: ChildProcess[] = [];
const sleepers: number[] = [];

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('namespaces-');
});
afterEach(() => {
  for (const pid of sleepers.splice(0)) killIfAlive(pid);
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** A worker in a new private mount namespace on the store at `root`. */
async function startWorker(root: string): Promise<Worker> {
  const child = spawn('unshare', ['-m', '--propagation', 'private', '--', process.execPath, WORKER, root], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const replies: ((line: Record<string, unknown>) => void)[] = [];
  let ready!: (namespace: string) => void;
  const namespace = new Promise<string>((resolve) => (ready = resolve));
  onJsonLines<Record<string, unknown>>(child.stdout!, (line) => {
    if ('ready' in line) ready(line.ready as string);
    else replies.shift()?.(line);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    namespace: await namespace,
    pid: child.pid as number,
    exited,
    run<T>(command: Record<string, unknown>): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        replies.push((line) => {
          if (line.error) reject(Object.assign(new Error((line.error as { message: string }).message), line.error));
          else resolve(line.result as T);
        });
        child.stdin!.write(`${JSON.stringify(command)}\n`);
      });
    },
  };
}

function world() {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(rootfs);
  return { dir, root, rootfs, runtime: new ContainerRuntime({ root, mounter: new BindMounter() }) };
}

async function mountedElsewhere(w: ReturnType<typeof world>) {
  const a = await startWorker(w.root);
  const x = await a.run<ContainerInfo>({ op: 'create', spec: { rootfs: w.rootfs, volumes: ['/data'] } });
  await a.run({ op: 'mount', id: x.id });
  await a.run({ op: 'write', file: path.join(w.rootfs, 'data', 'db'), data: 'rows' });
  return { a, x, volumeDir: path.join(w.root, 'volumes', x.volumes[0]!.volumeId) };
}

describe('a container mounted in another, live mount namespace', () => {
  test('recover() here makes no second set of its mounts; remove, unmount and mount are refused, naming the namespace; no data is lost', async () => {
    const w = world();
    const { a, x, volumeDir } = await mountedElsewhere(w);
    expect(a.namespace).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    // Invisible here: the write went into the volume, not into this namespace's rootfs.
    expect(mountsUnder(w.rootfs)).toEqual([]);
    expect(fs.readFileSync(path.join(volumeDir, 'db'), 'utf8')).toBe('rows');

    expect(await w.runtime.recover()).toEqual(NOTHING);
    expect(mountsUnder(w.rootfs)).toEqual([]);

    const refusal = await expectCode(w.runtime.remove(x.id, { force: true, volumes: true }), 'ERR_MOUNTED_IN_OTHER_NAMESPACE');
    expect(refusal.message).toContain(a.namespace);
    expect(refusal.message).toContain(x.id);
    await expectCode(w.runtime.unmount(x.id), 'ERR_MOUNTED_IN_OTHER_NAMESPACE');
    await expectCode(w.runtime.mount(x.id), 'ERR_MOUNTED_IN_OTHER_NAMESPACE');
    await expectCode(w.runtime.remove(x.id), 'ERR_CONTAINER_MOUNTED');
    expect(mountsUnder(w.rootfs)).toEqual([]);

    // Nothing lost: the container still says mounted, its data is there and in use over there.
    expect((await w.runtime.get(x.id)).mounted).toBe(true);
    expect(await a.run({ op: 'read', file: path.join(w.rootfs, 'data', 'db') })).toBe('rows');
    await a.run({ op: 'write', file: path.join(w.rootfs, 'data', 'db'), data: 'more rows' });
    expect(fs.readFileSync(path.join(volumeDir, 'db'), 'utf8')).toBe('more rows');

    // From its own namespace it unmounts; then this process may do anything with it.
    await a.run({ op: 'unmount', id: x.id });
    await w.runtime.remove(x.id, { volumes: true });
    expect(fs.existsSync(volumeDir)).toBe(false);
  });

  test('a third process in a third namespace: its recover() leaves the container alone too', async () => {
    const w = world();
    const { a, x } = await mountedElsewhere(w);
    const c = await startWorker(w.root);
    expect(c.namespace).not.toBe(a.namespace);
    expect(await c.run({ op: 'recover' })).toEqual(NOTHING);
    await expect(c.run({ op: 'read', file: path.join(w.rootfs, 'data', 'db') })).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(c.run({ op: 'remove', id: x.id, options: { force: true, volumes: true } })).rejects.toMatchObject({ code: 'ERR_MOUNTED_IN_OTHER_NAMESPACE' });
    expect(await a.run({ op: 'read', file: path.join(w.rootfs, 'data', 'db') })).toBe('rows');
  });

  test('its namespace kept alive by another process after the mounting one exits: still respected', async () => {
    const w = world();
    const { a, x, volumeDir } = await mountedElsewhere(w);
    const sleeper = await a.run<number>({ op: 'hold' });
    sleepers.push(sleeper);
    await a.run({ op: 'exit' });
    await a.exited;
    expect(fs.readlinkSync(`/proc/${sleeper}/ns/mnt`)).toBe(a.namespace);

    expect(await w.runtime.recover()).toEqual(NOTHING);
    await expectCode(w.runtime.remove(x.id, { force: true, volumes: true }), 'ERR_MOUNTED_IN_OTHER_NAMESPACE');
    expect(fs.readFileSync(path.join(volumeDir, 'db'), 'utf8')).toBe('rows');

    // Once its last process is gone, so are its mounts: the container counts as unmounted.
    killIfAlive(sleeper);
    while (fs.existsSync(`/proc/${sleeper}`)) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(await w.runtime.recover()).toMatchObject({ namespaceGone: [x.id], remounted: [], unmounted: [] });
    expect((await w.runtime.get(x.id)).mounted).toBe(false);
    expect(await w.runtime.recover()).toEqual(NOTHING);
  });
});

describe('a container whose mount namespace is gone', () => {
  test('counts as unmounted: recover() says so, and it can be mounted here', async () => {
    const w = world();
    const { a, x, volumeDir } = await mountedElsewhere(w);
    await a.run({ op: 'exit' });
    await a.exited;

    const report = await w.runtime.recover();
    expect(report).toEqual({ ...NOTHING, namespaceGone: [x.id], removedFiles: [expect.stringMatching(/^namespaces\/\d+\.json$/)] });
    expect(await w.runtime.recover()).toEqual(NOTHING);

    await w.runtime.mount(x.id);
    expect(fs.readFileSync(path.join(w.rootfs, 'data', 'db'), 'utf8')).toBe('rows');
    expect(mountsUnder(w.rootfs).map((m) => m.root)).toEqual([volumeDir]);
    await w.runtime.remove(x.id, { force: true, volumes: true });
    expect(mountsUnder(w.rootfs)).toEqual([]);
  });

  test('mount() from here without recover(): the stale record is replaced', async () => {
    const w = world();
    const { a, x } = await mountedElsewhere(w);
    await a.run({ op: 'exit' });
    await a.exited;
    await w.runtime.mount(x.id);
    expect(fs.readFileSync(path.join(w.rootfs, 'data', 'db'), 'utf8')).toBe('rows');
    await w.runtime.unmount(x.id);
    expect(mountsUnder(w.rootfs)).toEqual([]);
  });
});

describe('never delete a volume mounted in any namespace', () => {
  test('a volume whose configuration is gone but which another namespace still mounts: volumes.remove and prune keep it', async () => {
    const w = world();
    const { a, x, volumeDir } = await mountedElsewhere(w);
    const volumeId = x.volumes[0]!.volumeId;
    // The configuration lost behind the library's back (deleted by hand, say).
    fs.rmSync(path.join(w.root, 'containers', `${x.id}.json`));

    const refusal = await expectCode(w.runtime.volumes.remove(volumeId), 'ERR_VOLUME_BUSY');
    expect(refusal.message).toContain(volumeId);
    expect(refusal.message).toContain(a.namespace);
    expect((await w.runtime.volumes.prune()).removed).toEqual([]);
    expect(fs.readFileSync(path.join(volumeDir, 'db'), 'utf8')).toBe('rows');
    expect(await a.run({ op: 'read', file: path.join(w.rootfs, 'data', 'db') })).toBe('rows');

    // Its namespace gone, nothing holds it any more.
    await a.run({ op: 'exit' });
    await a.exited;
    expect((await w.runtime.volumes.prune()).removed).toEqual([volumeId]);
    expect(fs.existsSync(volumeDir)).toBe(false);
  });
});

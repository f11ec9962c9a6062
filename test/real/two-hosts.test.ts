import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, type ContainerInfo } from '../../src/index.js';
import { twoHosts, type TwoHosts } from '../../examples/two-hosts.js';
import { cleanupTemp, tempDir } from '../helpers/fixtures.js';
import { unmountAllUnder } from '../helpers/mounts.js';
import { describeTree, populateTree } from '../helpers/tree.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Volumes moved between two hosts over real ssh: host A and host B are network
 * namespaces joined by a veth pair, each with its own mount namespace and state root;
 * Debian's sshd runs in B's, B's receiving end is examples/receive.ts (the forced
 * command of one key), rsync uses another key. (a) a backup piped over ssh into a
 * restore on B; (b) sync, a change, sync again, restore of the synced tree on B; (c)
 * ssh refused, the link cut midway, B's disk full: coded errors, nothing half-created
 * on B, the source untouched. Copies are compared file by file with the source.
 */

jest.setTimeout(180_000);

const MiB = 1024 * 1024;
const WORKER = fileURLToPath(new URL('../helpers/host-a-worker.mjs', import.meta.url));
const TSX = path.resolve('node_modules/tsx/dist/cli.mjs');
const RECEIVE = path.resolve('examples/receive.ts');

let base: string;
let lab: TwoHosts;
let a: ContainerRuntime;
let b: ContainerRuntime;
let db: ContainerInfo;
const target = () => `root@${lab.b.address}`;

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('two-hosts-');
  // Host B's disk: small, so that it can fill up. Mounted before sshd starts, so its namespace has it.
  await fsp.mkdir(path.join(base, 'B'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', path.join(base, 'B')]);
  lab = await twoHosts(base, (host) => [process.execPath, TSX, RECEIVE, '--root', host.root, '--rootfs-parent', host.rootfs, '--incoming', host.incoming]);
  a = new ContainerRuntime({ root: path.join(base, 'A', 'state'), mounter: new BindMounter() });
  // Read by this process: B's store is on a disk both namespaces see.
  b = new ContainerRuntime({ root: lab.b.root, mounter: new BindMounter() });
  await fsp.mkdir(path.join(base, 'A', 'rootfs'), { recursive: true });
  db = await a.create({ rootfs: path.join(base, 'A', 'rootfs'), volumes: ['/data', '/data/nested', '/logs'] });
  populateTree(hostPath(a, db, '/data'));
  await fsp.writeFile(path.join(hostPath(a, db, '/data/nested'), 'inner'), 'nested\n');
  await fsp.writeFile(path.join(hostPath(a, db, '/logs'), 'big.log'), randomBytes(3 * MiB));
}, 120_000);

afterAll(async () => {
  await lab?.close();
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

function hostPath(runtime: ContainerRuntime, container: ContainerInfo, containerPath: string): string {
  const root = runtime === a ? path.join(base, 'A', 'state') : lab.b.root;
  return path.join(root, 'volumes', container.volumes.find((v) => v.path === containerPath)!.volumeId);
}

function volumesOf(runtime: ContainerRuntime, container: ContainerInfo) {
  return {
    '/data': describeTree(hostPath(runtime, container, '/data'), { skip: ['nested'] }),
    '/data/nested': describeTree(hostPath(runtime, container, '/data/nested')),
    '/logs': describeTree(hostPath(runtime, container, '/logs')),
  };
}

async function onA(args: string[]): Promise<Record<string, any>> {
  const run = await lab.onA([process.execPath, WORKER, ...args], { reject: false, stdin: 'ignore' });
  const last = String(run.stdout).trim().split('\n').at(-1) ?? '';
  if (!last.startsWith('{')) throw new Error(`host A's worker printed nothing (${run.exitCode}): ${String(run.stderr)}`);
  return JSON.parse(last) as Record<string, any>;
}

/** B's containers, once no receiver is still cleaning up: polled, since B's side ends on its own time. */
async function containersOnB(expected: number): Promise<ContainerInfo[]> {
  for (let i = 0; i < 300; i++) {
    const list = await b.list();
    const volumes = fs.existsSync(path.join(lab.b.root, 'volumes')) ? fs.readdirSync(path.join(lab.b.root, 'volumes')) : [];
    const rootfsLeft = fs.readdirSync(lab.b.rootfs).length;
    if (list.length === expected && volumes.length === list.reduce((n, c) => n + c.volumes.length, 0) && rootfsLeft === expected) return list;
    await sleep(100);
  }
  return b.list();
}

describe('(a) a backup stream over ssh into a restore on host B', () => {
  test('B gets a container whose volumes are the source file by file', async () => {
    const result = await onA(['backup', path.join(base, 'A', 'state'), db.id, JSON.stringify(lab.receiveSsh), target()]);
    expect(result).toMatchObject({ backup: { ok: true }, ssh: { exitCode: 0 }, received: { container: expect.any(String) } });
    const [restored] = await containersOnB(1);
    expect(restored!.id).toBe(result.received.container);
    expect(volumesOf(b, restored!)).toEqual(volumesOf(a, db));
    expect(describeTree(hostPath(b, restored!, '/data'))['sparse.img']).toMatchObject({ sparse: true });
    await b.remove(restored!.id, { volumes: true });
    await fsp.rm(result.received.rootfs, { recursive: true });
  });
});

describe('(b) sync to B, a change, sync again, restore of the synced tree on B', () => {
  test('the second sync sends only the change; the restored container equals the changed source', async () => {
    const destination = `${target()}:${lab.b.incoming}/db`;
    const first = await onA(['sync', path.join(base, 'A', 'state'), db.id, destination, JSON.stringify(lab.ssh)]);
    expect(first).toMatchObject({ ok: true, warnings: [] });
    expect(first.filesTransferred).toBeGreaterThan(5);
    expect(first.bytesSent).toBeGreaterThan(3 * MiB);
    // The change: 64 KiB rewritten inside the big file, a file added, one removed, a new hard link.
    const logs = hostPath(a, db, '/logs');
    const handle = await fsp.open(path.join(logs, 'big.log'), 'r+');
    await handle.write(randomBytes(64 * 1024), 0, 64 * 1024, MiB);
    await handle.close();
    await fsp.writeFile(path.join(hostPath(a, db, '/data'), 'added'), 'new on A\n');
    await fsp.rm(path.join(hostPath(a, db, '/data'), 'empty'));
    await fsp.link(path.join(hostPath(a, db, '/data'), 'added'), path.join(hostPath(a, db, '/data/nested'), 'added-link-across-volumes'));
    const second = await onA(['sync', path.join(base, 'A', 'state'), db.id, destination, JSON.stringify(lab.ssh)]);
    // The removed file, and the last sync's manifest (removed first, written again last).
    expect(second).toMatchObject({ ok: true, filesDeleted: 2 });
    expect(second.filesTransferred).toBeLessThanOrEqual(3);
    // The delta, not the 3 MiB file again.
    expect(second.bytesSent).toBeLessThan(MiB);
    const received = await lab.onA(['ssh', ...lab.receiveSsh, target(), 'restore-synced', 'db'], { reject: false, stdin: 'ignore' });
    const answer = JSON.parse(String(received.stdout).trim()) as { container: string; rootfs: string };
    expect(answer).toMatchObject({ container: expect.any(String) });
    const [restored] = await containersOnB(1);
    expect(volumesOf(b, restored!)).toEqual(volumesOf(a, db));
    // A hard link between two volumes stays one file.
    const ino = (p: string, name: string) => fs.statSync(path.join(hostPath(b, restored!, p), name)).ino;
    expect(ino('/data/nested', 'added-link-across-volumes')).toBe(ino('/data', 'added'));
    await b.remove(restored!.id, { volumes: true });
    await fsp.rm(answer.rootfs, { recursive: true });
  });
});

describe('(c) failures: a coded error on A, nothing half-created on B, the source untouched', () => {
  const state = () => path.join(base, 'A', 'state');

  test('ssh refused (a key B does not accept): sync and backup fail with ERR_HANDLER_FAILED', async () => {
    const before = await a.list();
    const tree = volumesOf(a, db);
    const stranger = lab.ssh.map((arg) => arg.replace(/\/sync$/, '/host'));
    const synced = await onA(['sync', state(), db.id, `${target()}:${lab.b.incoming}/refused`, JSON.stringify(stranger)]);
    // rsync exits 255 when ssh does, or 12 when it sees the stream end first.
    expect(synced).toMatchObject({ code: 'ERR_HANDLER_FAILED', exitCode: expect.any(Number) });
    expect([12, 255]).toContain(synced.exitCode);
    expect(synced.message).toMatch(/Permission denied/);
    const backedUp = await onA(['backup', state(), db.id, JSON.stringify(stranger), target()]);
    expect(backedUp.backup).toMatchObject({ code: 'ERR_HANDLER_FAILED' });
    expect(backedUp.ssh.exitCode).toBe(255);
    expect(await containersOnB(0)).toEqual([]);
    expect(fs.existsSync(path.join(lab.b.incoming, 'refused'))).toBe(false);
    expect(await a.list()).toEqual(before);
    expect(volumesOf(a, db)).toEqual(tree);
  });

  test('the link cut midway through a backup stream: ERR_HANDLER_FAILED on A, and B removes what it had restored', async () => {
    const tree = volumesOf(a, db);
    const go = path.join(base, 'go-cut');
    const worker = lab.onA([process.execPath, WORKER, 'backup', state(), db.id, JSON.stringify(lab.receiveSsh), target(), String(MiB), go], { reject: false, stdin: 'ignore' });
    let cut = false;
    worker.stdout!.on('data', (chunk: Buffer) => {
      if (!cut && chunk.toString().includes('"paused"')) {
        cut = true;
        void lab.link(false).then(() => fsp.writeFile(go, ''));
      }
    });
    const run = await worker;
    await lab.link(true);
    expect(cut).toBe(true);
    const result = JSON.parse(String(run.stdout).trim().split('\n').at(-1)!) as Record<string, any>;
    expect(result.backup).toMatchObject({ code: 'ERR_HANDLER_FAILED' });
    expect(result.ssh.exitCode).toBe(255);
    expect(await containersOnB(0)).toEqual([]);
    expect(volumesOf(a, db)).toEqual(tree);
    expect((await a.list()).map((c) => c.id)).toEqual([db.id]);
  });

  test("B's disk fills up: the stream restore and the sync fail with coded errors, and B keeps nothing of them", async () => {
    const big = path.join(hostPath(a, db, '/logs'), 'too-big.bin');
    await fsp.writeFile(big, randomBytes(64 * MiB));
    try {
      const tree = volumesOf(a, db);
      const backedUp = await onA(['backup', state(), db.id, JSON.stringify(lab.receiveSsh), target()]);
      expect(backedUp.received).toMatchObject({ error: 'ERR_HANDLER_FAILED' });
      expect(backedUp.received.message).toMatch(/No space left on device/);
      expect(await containersOnB(0)).toEqual([]);
      const synced = await onA(['sync', state(), db.id, `${target()}:${lab.b.incoming}/full`, JSON.stringify(lab.ssh)]);
      expect(synced).toMatchObject({ code: 'ERR_HANDLER_FAILED' });
      expect(synced.message).toMatch(/No space left on device/);
      // The destination holds no manifest: restore refuses it as incomplete.
      expect(fs.existsSync(path.join(lab.b.incoming, 'full', 'container-volumes-backup.json'))).toBe(false);
      const refused = await lab.onA(['ssh', ...lab.receiveSsh, target(), 'restore-synced', 'full'], { reject: false, stdin: 'ignore' });
      expect(JSON.parse(String(refused.stdout).trim())).toMatchObject({ error: 'ERR_INVALID_ARCHIVE' });
      expect(await containersOnB(0)).toEqual([]);
      expect(volumesOf(a, db)).toEqual(tree);
    } finally {
      await fsp.rm(big);
      await fsp.rm(path.join(lab.b.incoming, 'full'), { recursive: true, force: true });
    }
  });
});

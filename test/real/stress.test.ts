import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, type VolumeMount } from '../../src/index.js';
import { STALE_MS } from '../../src/store/lock.js';
import { cleanupTemp, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { childNamed, killIfAlive, processState } from '../helpers/processes.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * SPEC §5 under load, with REAL bind mounts: separate Node processes (running the
 * built package from dist/, in this suite's private mount namespace) share one store
 * and race each other on the same containers and volumes. Each worker logs every
 * acknowledged result; afterwards the store, the volume directories and
 * /proc/self/mountinfo must agree with what was acknowledged.
 */

const WORKER = fileURLToPath(new URL('../helpers/stress-worker.mjs', import.meta.url));
const DIST = fileURLToPath(new URL('../../dist/index.js', import.meta.url));
const WORKERS = 8;
const OPERATIONS = 200;
/** The no-deadlock bound: generous, since 8 processes share 2 cores and one lock. */
const NO_DEADLOCK_MS = 240_000;
/** STALE_MS, plus the lock's retry back-off and a loaded machine's scheduling. */
const TAKEOVER_BOUND_MS = STALE_MS + 10_000;
/** Large enough that `cp` is still copying when we look for it. */
const COPY_UP_MB = 128;

/** Errors one worker can cause another by racing it; anything else is a failure. */
const RACE_ERRORS: Record<string, string[]> = {
  create: [],
  // ERR_MOUNT_POINT_READ_ONLY: a volume below one shared read-only whose mount point is missing from it.
  createFrom: ['ERR_CONTAINER_NOT_FOUND', 'ERR_MOUNT_POINT_READ_ONLY'],
  createVolumes: ['ERR_CONTAINER_NOT_FOUND', 'ERR_CONTAINER_MOUNTED', 'ERR_DUPLICATE_MOUNT_POINT', 'ERR_MOUNT_POINT_READ_ONLY'],
  shareVolumesFrom: ['ERR_CONTAINER_NOT_FOUND', 'ERR_CONTAINER_MOUNTED', 'ERR_DUPLICATE_MOUNT_POINT', 'ERR_MOUNT_POINT_READ_ONLY'],
  mount: ['ERR_CONTAINER_NOT_FOUND', 'ERR_MOUNT_POINT_READ_ONLY'],
  unmount: ['ERR_CONTAINER_NOT_FOUND'],
  remove: ['ERR_CONTAINER_NOT_FOUND', 'ERR_CONTAINER_MOUNTED'],
  removeForce: ['ERR_CONTAINER_NOT_FOUND'],
  removeVolume: ['ERR_VOLUME_IN_USE', 'ERR_VOLUME_NOT_FOUND'],
  prune: [],
  list: [],
};

interface OpRecord {
  w: number;
  i: number;
  op: string;
  ok: boolean;
  t0: number;
  t1: number;
  id?: string;
  from?: string;
  volumes?: VolumeMount[];
  added?: VolumeMount[];
  force?: boolean;
  withVolumes?: boolean;
  volumeId?: string;
  removed?: string[];
  code?: string | null;
  message?: string;
}

let base: string;
const children: ChildProcess[] = [];
/** Descendants of our workers that we stopped, to be killed if a test fails before it does so. */
const stopped: number[] = [];

beforeAll(async () => {
  assertPrivateMountNamespace();
  if (!fs.existsSync(DIST)) throw new Error(`${DIST} is missing: the workers run the built package; build it first with \`npx tsup\``);
  base = await tempDir('stress-');
});
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const pid of stopped.splice(0)) killIfAlive(pid);
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** `ownNamespace`: in a private mount namespace of its own, which dies with it. */
function startWorker(
  args: string[],
  ownNamespace = false,
): { child: ChildProcess; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> } {
  const command = [process.execPath, WORKER, ...args];
  const child = ownNamespace
    ? spawn('unshare', ['-m', '--propagation', 'private', '--', ...command], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DEBUG: '' } })
    : spawn(command[0] as string, command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DEBUG: '' } });
  children.push(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stderr }));
  });
  return { child, exit };
}

function readLog<T>(file: string): T[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as T);
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

const byPath = (volumes: readonly VolumeMount[]) => [...volumes].sort((a, b) => a.path.localeCompare(b.path));
const tally = (keys: string[]) => Object.fromEntries([...new Set(keys)].sort().map((k) => [k, keys.filter((x) => x === k).length]));

/** What a worker in another mount namespace may meet besides RACE_ERRORS: a container mounted in a namespace that is not its own. */
const ELSEWHERE: Record<string, string[]> = {
  mount: ['ERR_MOUNTED_IN_OTHER_NAMESPACE'],
  unmount: ['ERR_MOUNTED_IN_OTHER_NAMESPACE'],
  removeForce: ['ERR_MOUNTED_IN_OTHER_NAMESPACE'],
};

describe('8 processes × 200 random operations on one store, with real bind mounts (SPEC §5)', () => {
  test.each([
    ['all in this mount namespace', false],
    ['every other one in a mount namespace of its own', true],
  ])('%s: no lost update, no deadlock, no dangling or in-use volume deleted, mounts exactly as acknowledged', async (_, namespaces) => {
    /** Odd-numbered workers run in a namespace of their own when `namespaces`. */
    const inOwnNamespace = (w: number) => namespaces && w % 2 === 1;
    const dir = fs.mkdtempSync(path.join(base, 'ops-'));
    const root = path.join(dir, 'state');
    const rootfsDir = path.join(dir, 'rootfs');
    fs.mkdirSync(rootfsDir);
    const logOf = (w: number) => path.join(dir, `worker-${w}.log`);

    const started = Date.now();
    const workers = Array.from({ length: WORKERS }, (_, k) =>
      startWorker(['ops', root, rootfsDir, String(k + 1), String(OPERATIONS), logOf(k + 1)], inOwnNamespace(k + 1)),
    );
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadlock'>((resolve) => (timer = setTimeout(() => resolve('deadlock'), NO_DEADLOCK_MS)));
    const finished = await Promise.race([Promise.all(workers.map((w) => w.exit)), deadline]);
    clearTimeout(timer);
    const elapsed = Date.now() - started;
    const records = Array.from({ length: WORKERS }, (_, k) => readLog<OpRecord>(logOf(k + 1))).flat();
    const ops = records.filter((r) => r.op !== 'done');
    const acked = ops.filter((r) => r.ok);
    const errors = ops.filter((r) => !r.ok);
    console.log(
      `stress: ${WORKERS} workers × ${OPERATIONS} operations = ${ops.length} operations in ${elapsed} ms ` +
        `(no-deadlock bound ${NO_DEADLOCK_MS} ms)\n` +
        `  acknowledged: ${JSON.stringify(tally(acked.map((r) => r.op)))}\n` +
        `  errors by code: ${JSON.stringify(tally(errors.map((r) => `${r.op}: ${r.code ?? 'NO CODE'}`)))}`,
    );

    // No deadlock: every worker finished within the bound, cleanly, every operation logged.
    expect(finished).not.toBe('deadlock');
    for (const [k, w] of workers.entries()) {
      const { code, signal, stderr } = await w.exit;
      // stderr is shown when the exit code is wrong; it need not be empty (NODE_OPTIONS may add warnings).
      expect({ worker: k + 1, code, signal, stderr }).toEqual({ worker: k + 1, code: 0, signal: null, stderr: expect.any(String) });
      const own = records.filter((r) => r.w === k + 1);
      expect(own.filter((r) => r.op !== 'done')).toHaveLength(OPERATIONS);
      expect(own.at(-1)?.op).toBe('done');
    }

    // Errors only from races between workers: each with a code, and one its operation can meet.
    const allowed = (r: OpRecord) => {
      const kind = r.op === 'remove' && r.force ? 'removeForce' : r.op;
      return [...(RACE_ERRORS[kind] ?? []), ...(namespaces ? (ELSEWHERE[kind] ?? []) : [])];
    };
    expect(errors.filter((r) => !r.code || !allowed(r).includes(r.code)).map((r) => `${r.op} → ${r.code ?? 'no code'}: ${r.message}`)).toEqual([]);

    const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
    const volumeDir = (id: string) => path.join(root, 'volumes', id);
    // The workers' own namespaces died with them, and their mounts with them.
    // Nothing else is there to repair: a repair here would hide what the checks below look for.
    const recovered = await runtime.recover();
    expect({ ...recovered, namespaceGone: [], removedFiles: recovered.removedFiles.filter((f) => !f.startsWith('namespaces/')) }).toEqual({
      rebooted: [], namespaceGone: [], attachmentsGone: [], removedHandlers: [], unmounted: [], remounted: [], removedVolumes: [], removedFiles: [], failed: [],
    });
    if (!namespaces) expect(recovered.namespaceGone).toEqual([]);

    // No lost update: exactly the acknowledged creates minus the acknowledged removals
    // exist, each removed at most once, each with every volume it was acknowledged to get.
    const creates = acked.filter((r) => r.op === 'create' || r.op === 'createFrom');
    const removes = acked.filter((r) => r.op === 'remove');
    const removedIds = removes.map((r) => r.id!);
    expect(removedIds.filter((id, n) => removedIds.indexOf(id) !== n)).toEqual([]);
    expect(removedIds.filter((id) => !creates.some((c) => c.id === id))).toEqual([]);
    const expectedVolumes = new Map(creates.filter((c) => !removedIds.includes(c.id!)).map((c) => [c.id!, [...c.volumes!]]));
    for (const r of acked.filter((r) => r.op === 'createVolumes' || r.op === 'shareVolumesFrom')) {
      // Containers removed since are not in the map.
      expectedVolumes.get(r.id!)?.push(...r.added!);
    }
    const final = await runtime.list();
    expect(final.map((c) => c.id).sort()).toEqual([...expectedVolumes.keys()].sort());
    for (const c of final) expect({ id: c.id, volumes: byPath(c.volumes) }).toEqual({ id: c.id, volumes: byPath(expectedVolumes.get(c.id)!) });

    // No volume handed out twice.
    const createdVolumeIds = [...creates.flatMap((r) => r.volumes!), ...acked.flatMap((r) => (r.op === 'createVolumes' ? r.added! : []))]
      .filter((v) => v.origin === 'created')
      .map((v) => v.volumeId);
    expect(createdVolumeIds.filter((id, n) => createdVolumeIds.indexOf(id) !== n)).toEqual([]);

    // No configuration names a volume directory that does not exist (read from the files themselves).
    const configFiles = fs.readdirSync(path.join(root, 'containers')).filter((n) => n.endsWith('.json'));
    expect(configFiles).toHaveLength(final.length);
    const dangling = configFiles.flatMap((name) => {
      const config = JSON.parse(fs.readFileSync(path.join(root, 'containers', name), 'utf8')) as { volumes: { volumeId: string; path: string }[] };
      return config.volumes.filter((v) => !fs.existsSync(volumeDir(v.volumeId))).map((v) => `${name} ${v.path} → ${v.volumeId}`);
    });
    expect(dangling).toEqual([]);

    // No volume deleted while in use: no acknowledged prune or volumes.remove ran entirely
    // between a use's acknowledgement and the start of its container's removal.
    const deletions = [
      ...acked.filter((r) => r.op === 'prune').flatMap((r) => r.removed!.map((volumeId) => ({ volumeId, t0: r.t0, t1: r.t1, by: `prune w${r.w}#${r.i}` }))),
      ...acked.filter((r) => r.op === 'removeVolume').map((r) => ({ volumeId: r.volumeId!, t0: r.t0, t1: r.t1, by: `volumes.remove w${r.w}#${r.i}` })),
    ];
    const deletedIds = deletions.map((d) => d.volumeId);
    expect(deletedIds.filter((id, n) => deletedIds.indexOf(id) !== n)).toEqual([]);
    const removalStart = new Map(removes.map((r) => [r.id!, r.t0]));
    const uses = [
      ...creates.flatMap((r) => r.volumes!.map((v) => ({ containerId: r.id!, volumeId: v.volumeId, since: r.t1 }))),
      ...acked
        .filter((r) => r.op === 'createVolumes' || r.op === 'shareVolumesFrom')
        .flatMap((r) => r.added!.map((v) => ({ containerId: r.id!, volumeId: v.volumeId, since: r.t1 }))),
    ];
    const deletedInUse = uses.flatMap((u) =>
      deletions
        .filter((d) => d.volumeId === u.volumeId && d.t0 > u.since && d.t1 < (removalStart.get(u.containerId) ?? Infinity))
        .map((d) => `${d.by} deleted ${d.volumeId} while container ${u.containerId} used it`),
    );
    expect(deletedInUse).toEqual([]);
    console.log(`  ${deletions.length} volumes deleted by prune or volumes.remove, checked against ${uses.length} acknowledged uses`);

    // The host's mounts are exactly those of the containers meant to be mounted, each once,
    // from the live volume directory, with its mode and nosuid,nodev; nothing of removed or
    // unmounted ones.
    const mounted = mountsUnder(rootfsDir).map(
      (m) => `${m.mountPoint} ${m.root} ${m.options.includes('ro') ? 'ro' : 'rw'}${m.options.includes('nosuid') && m.options.includes('nodev') ? '' : ' WITHOUT nosuid,nodev'}`,
    );
    const wanted = final.filter((c) => c.mounted).flatMap((c) => c.volumes.map((v) => `${c.rootfs}${v.path} ${volumeDir(v.volumeId)} ${v.mode}`));
    if (process.env.STRESS_DEBUG) {
      const { processesIn } = await import('../../src/namespaces/mount-namespace.js');
      for (const c of final.filter((c) => c.mounted)) {
        const raw = JSON.parse(fs.readFileSync(path.join(root, 'containers', `${c.id}.json`), 'utf8'));
        console.log(c.rootfs, JSON.stringify(raw.mountedIn), raw.mountedIn ? processesIn(raw.mountedIn.namespace).map((p) => `${p}:${fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ')}`) : '', fs.readlinkSync('/proc/self/ns/mnt'));
      }
    }
    expect(mounted.sort()).toEqual(wanted.sort());

    // ...and agree with the acknowledgements wherever the order is certain: mounted with
    // nothing that could undo it after, or unmounted with no mount finishing after.
    const finalById = new Map(final.map((c) => [c.id, c]));
    const undoers = acked.filter((r) => r.op === 'unmount' || r.op === 'remove');
    const mountAcks = acked.filter((r) => r.op === 'mount');
    const surelyMounted = new Set(
      mountAcks.filter((m) => !inOwnNamespace(m.w) && !undoers.some((u) => u.id === m.id && u.t1 > m.t0)).map((m) => m.id!),
    );
    // Mounted in a namespace that is gone, and not mounted again here since: unmounted.
    const goneWithNamespace = new Set(
      mountAcks.filter((m) => inOwnNamespace(m.w) && !mountAcks.some((l) => !inOwnNamespace(l.w) && l.id === m.id && l.t1 > m.t0)).map((m) => m.id!),
    );
    for (const id of goneWithNamespace) expect({ id, mounted: finalById.get(id)?.mounted ?? false }).toEqual({ id, mounted: false });
    const surelyUnmounted = new Set(
      acked.filter((u) => u.op === 'unmount' && !mountAcks.some((m) => m.id === u.id && m.t1 > u.t0)).map((u) => u.id!),
    );
    for (const id of surelyMounted) expect({ id, mounted: finalById.get(id)?.mounted }).toEqual({ id, mounted: true });
    for (const id of surelyUnmounted) expect({ id, mounted: finalById.get(id)?.mounted ?? false }).toEqual({ id, mounted: false });
    console.log(
      `  at the end: ${final.length} containers (${wanted.length} mounts of ${final.filter((c) => c.mounted).length} mounted ones), ` +
        `${fs.readdirSync(path.join(root, 'volumes')).length} volume directories; ` +
        `${surelyMounted.size} containers surely mounted and ${surelyUnmounted.size} surely unmounted by the acknowledgements` +
        (namespaces ? `; recover() found ${recovered.namespaceGone.length} mounted in a namespace that is gone (${goneWithNamespace.size} surely so)` : ''),
    );
    expect(surelyMounted.size + surelyUnmounted.size).toBeGreaterThan(0);

    // Nothing half-done is left, and the store takes new work: a final prune leaves exactly
    // the referenced volumes; unmounting and removing everything leaves nothing behind.
    expect(fs.readdirSync(path.join(root, 'pending'))).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'trash'))).toEqual([]);
    const referenced = new Set(final.flatMap((c) => c.volumes.map((v) => v.volumeId)));
    await runtime.volumes.prune();
    expect(fs.readdirSync(path.join(root, 'volumes')).sort()).toEqual([...referenced].sort());
    for (const c of final) await runtime.remove(c.id, { force: true, volumes: true });
    expect(mountsUnder(rootfsDir)).toEqual([]);
    expect(await runtime.list()).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'volumes'))).toEqual([]);
  }, NO_DEADLOCK_MS + 60_000);
});

describe('a lock left by a process killed in the middle of an operation (SPEC §5)', () => {
  test('a worker SIGKILLed during a copy-up create: a live holder is waited for, a dead one is taken over, nothing dangles', async () => {
    const dir = fs.mkdtempSync(path.join(base, 'lock-'));
    const root = path.join(dir, 'state');
    const bigRootfs = path.join(dir, 'rootfs', 'big');
    const waiterRootfs = path.join(dir, 'rootfs', 'waiter');
    fs.mkdirSync(path.join(bigRootfs, 'data'), { recursive: true });
    fs.mkdirSync(waiterRootfs, { recursive: true });
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    const blob = fs.openSync(path.join(bigRootfs, 'data', 'blob'), 'w');
    for (let n = 0; n < COPY_UP_MB; n++) fs.writeSync(blob, chunk);
    fs.closeSync(blob);

    // The holder's create takes the lock and copies /data up with `cp`. Freezing that
    // `cp` keeps the holder inside the operation, its lock refreshed, for as long as we like.
    const holderLog = path.join(dir, 'holder.log');
    const holder = startWorker(['create', root, bigRootfs, holderLog]);
    let holderExited = false;
    void holder.exit.then(() => (holderExited = true));
    const cp = await childNamed(holder.child.pid!, 'cp', () => holderExited);
    process.kill(cp, 'SIGSTOP');
    stopped.push(cp);
    await until(() => processState(cp) === 'T');
    expect(fs.existsSync(path.join(root, 'lock'))).toBe(true);

    const waiterLog = path.join(dir, 'waiter.log');
    const waiter = startWorker(['create', root, waiterRootfs, waiterLog]);
    await until(() => readLog(waiterLog).length > 0);
    // Longer than STALE_MS: a live holder refreshes its lock and must not be taken over.
    await new Promise((resolve) => setTimeout(resolve, STALE_MS + 1_000));
    expect(readLog<{ op: string }>(waiterLog).map((l) => l.op)).toEqual(['start']);
    expect(readLog<{ op: string }>(holderLog).map((l) => l.op)).toEqual(['start']);

    const killedAt = Date.now();
    holder.child.kill('SIGKILL');
    expect((await holder.exit).signal).toBe('SIGKILL');
    const waited = await waiter.exit;
    expect({ code: waited.code, stderr: waited.stderr }).toEqual({ code: 0, stderr: expect.any(String) });
    const created = readLog<{ op: string; id: string; volumes: VolumeMount[]; t: number }>(waiterLog).find((l) => l.op === 'created')!;
    const takeover = created.t - killedAt;
    console.log(`lock takeover after SIGKILL of a holder in the middle of copy-up: ${takeover} ms (STALE_MS ${STALE_MS}, bound ${TAKEOVER_BOUND_MS})`);
    expect(takeover).toBeLessThan(TAKEOVER_BOUND_MS);

    process.kill(cp, 'SIGKILL');
    await until(() => processState(cp) === undefined || processState(cp) === 'Z');
    // Dead now: its pid may be reused, and must not be signalled again after the test.
    stopped.splice(stopped.indexOf(cp), 1);

    // The killed create was never acknowledged and left no container; the waiter's is
    // whole; the half-copied volume is referenced by nothing.
    const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
    const containers = await runtime.list();
    expect(containers.map((c) => c.id)).toEqual([created.id]);
    const waiterVolume = created.volumes[0]!.volumeId;
    expect(fs.readdirSync(path.join(root, 'volumes'))).toContain(waiterVolume);
    const debris = fs.readdirSync(path.join(root, 'volumes')).filter((id) => id !== waiterVolume);
    expect(debris).toHaveLength(1);
    expect((await runtime.volumes.list()).find((v) => v.id === debris[0])?.usedBy).toEqual([]);

    // The store takes real work.
    await runtime.mount(created.id);
    expect(mountsUnder(waiterRootfs).map((m) => [m.mountPoint, m.root])).toEqual([[path.join(waiterRootfs, 'data'), path.join(root, 'volumes', waiterVolume)]]);
    await runtime.unmount(created.id);
    expect(mountsUnder(dir)).toEqual([]);

    // Half-created volumes are found and removed (docs/semantics.md: "prune() removes them").
    const { removed } = await runtime.volumes.prune();
    expect(removed).toEqual(debris);
    expect(fs.readdirSync(path.join(root, 'volumes'))).toEqual([waiterVolume]);
    await runtime.remove(created.id, { volumes: true });
    expect(fs.readdirSync(path.join(root, 'volumes'))).toEqual([]);
  }, 60_000);
});

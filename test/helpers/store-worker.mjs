#!/usr/bin/env node
// A separate process working on a shared store, for test/unit/multi-process.test.ts.
// It uses the BUILT package (dist/), as another process of an application would.
//
//   node store-worker.mjs ops <root> <rootfsDir> <worker> <operations>
//     A seeded random mix of operations on containers of its own; prints one JSON
//     line per acknowledged operation on stdout. Any failure: a JSON line with
//     op 'error' and exit code 1.
//
//   node store-worker.mjs hold-lock-library <root> <rootfsDir>
//     Takes the store lock through the library itself (runtime.mount with a mounter
//     whose mount() never returns), prints {"op":"locked"} and waits to be killed.
//
//   node store-worker.mjs unmount-paused <root> <rootfsDir>
//     Creates and mounts a container, prints {"op":"unmounting","id":…} from inside
//     runtime.unmount (its mounter's unmount) and waits there, blocking, until the file
//     <rootfsDir>/resume exists (the test SIGSTOPs it meanwhile); then prints
//     {"op":"unmounted"} or {"op":"error",…}.
//
//   node store-worker.mjs hold-lock-raw <root>
//     Takes the store lock with proper-lockfile, as earlier versions of the library
//     did (src/store/lock.ts keeps its protocol), prints {"op":"locked"} and waits to
//     be killed.
import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadDist, random } from './worker.mjs';

const { ContainerRuntime, FakeMounter } = await loadDist('store-worker');

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const [mode, ...args] = process.argv.slice(2);

const PATHS = ['/data', '/var/lib/db', '/var/log', '/srv/www', '/cache', '/home/app', '/opt/state', '/tmp/work'];

class WorkerFailure extends Error {}
function check(condition, message) {
  if (!condition) throw new WorkerFailure(message);
}
const ids = (info) => info.volumes.map((v) => ({ path: v.path, volumeId: v.volumeId }));
const createdIds = (volumes) => volumes.filter((v) => v.origin === 'created').map((v) => v.volumeId);

async function runOperations(root, rootfsDir, worker, operations) {
  const rand = random(0x5eed + worker * 7919);
  const pick = (list) => list[Math.floor(rand() * list.length)];
  const pickPaths = (n, exclude = []) => {
    const free = PATHS.filter((p) => !exclude.includes(p));
    const out = [];
    while (out.length < n && free.length > 0) out.push(...free.splice(Math.floor(rand() * free.length), 1));
    return out;
  };

  // Each worker has its own rootfs, with some content for copy-up to copy.
  const rootfs = path.join(rootfsDir, `worker-${worker}`);
  await fs.mkdir(path.join(rootfs, 'data'), { recursive: true });
  await fs.writeFile(path.join(rootfs, 'data', 'seed.txt'), `worker ${worker}\n`);
  await fs.mkdir(path.join(rootfs, 'var/log'), { recursive: true });
  await fs.writeFile(path.join(rootfs, 'var/log', 'boot.log'), 'booted\n');

  const runtime = new ContainerRuntime({ root, mounter: new FakeMounter() });
  /** This worker's containers that exist: id → [{ path, volumeId }] as this worker last saw them. */
  const mine = new Map();
  /** Every volume id this worker was told was created; a new one must never repeat. */
  const seenVolumes = new Set();

  const step = async (i) => {
    const live = [...mine.keys()];
    const r = rand();
    if (live.length === 0 || r < 0.3) {
      const paths = pickPaths(1 + Math.floor(rand() * 3));
      const info = await runtime.create({ rootfs, volumes: paths });
      check(info.volumes.length === paths.length, `create: asked for ${paths.length} volumes, got ${info.volumes.length}`);
      for (const v of info.volumes) {
        check(!seenVolumes.has(v.volumeId), `create: volume id ${v.volumeId} handed out twice`);
        seenVolumes.add(v.volumeId);
      }
      mine.set(info.id, ids(info));
      print({ op: 'create', i, id: info.id, volumes: ids(info), created: createdIds(info.volumes) });
    } else if (r < 0.45) {
      const source = pick(live);
      const sourceVolumes = mine.get(source);
      const extra = pickPaths(Math.floor(rand() * 2), sourceVolumes.map((v) => v.path));
      const info = await runtime.create({ rootfs, volumes: extra, volumesFrom: [rand() < 0.5 ? source : `${source}:ro`] });
      // What it shares is exactly what the source had: no other process changed the source.
      for (const v of sourceVolumes) {
        const shared = info.volumes.find((m) => m.path === v.path);
        check(shared?.volumeId === v.volumeId, `create from ${source}: ${v.path} should share ${v.volumeId}, got ${shared?.volumeId}`);
      }
      check(info.volumes.length === sourceVolumes.length + extra.length, `create from ${source}: wrong number of volumes`);
      mine.set(info.id, ids(info));
      print({ op: 'create', i, id: info.id, from: source, volumes: ids(info), created: createdIds(info.volumes) });
    } else if (r < 0.6) {
      const id = pick(live);
      const paths = pickPaths(1, mine.get(id).map((v) => v.path));
      if (paths.length === 0) return step(i);
      const added = await runtime.createVolumes(id, paths);
      check(added.length === 1 && added[0].path === paths[0], `createVolumes ${id}: unexpected result ${JSON.stringify(added)}`);
      check(!seenVolumes.has(added[0].volumeId), `createVolumes: volume id ${added[0].volumeId} handed out twice`);
      seenVolumes.add(added[0].volumeId);
      mine.set(id, [...mine.get(id), { path: added[0].path, volumeId: added[0].volumeId }]);
      print({ op: 'createVolumes', i, id, volumes: [{ path: added[0].path, volumeId: added[0].volumeId }], created: createdIds(added) });
    } else if (r < 0.8) {
      const id = pick(live);
      // Mostly `rm -v`; sometimes plain `rm`, which leaves volumes for prune to find.
      const volumes = rand() < 0.75;
      await runtime.remove(id, { volumes });
      mine.delete(id);
      print({ op: 'remove', i, id, volumes });
    } else if (r < 0.9) {
      const { removed } = await runtime.volumes.prune();
      // None of this worker's containers may have lost a volume to it.
      const inUse = new Set([...mine.values()].flat().map((v) => v.volumeId));
      const wrong = removed.filter((id) => inUse.has(id));
      check(wrong.length === 0, `prune deleted volumes in use by this worker's containers: ${wrong.join(', ')}`);
      print({ op: 'prune', i, removed });
    } else {
      // Mount and unmount within this process only: a FakeMounter's mounts are its own.
      const id = pick(live);
      const mounted = await runtime.mount(id);
      check(mounted.mounted === true, `mount ${id}: not marked mounted`);
      const unmounted = await runtime.unmount(id);
      check(unmounted.mounted === false, `unmount ${id}: still marked mounted`);
      print({ op: 'mount-unmount', i, id });
    }
  };

  for (let i = 0; i < operations; i++) {
    await step(i);
    // Whatever the other processes do meanwhile, a volume of a container of this
    // worker must exist at every moment (prune and remove -v elsewhere must spare it).
    for (const [id, volumes] of mine) {
      for (const { volumeId, path: at } of volumes) {
        check(existsSync(path.join(root, 'volumes', volumeId)), `after operation ${i}: volume ${volumeId} of container ${id} at ${at} is gone`);
      }
    }
  }

  // What this worker's containers look like on disk now must be what it was told.
  for (const [id, volumes] of mine) {
    const info = await runtime.get(id);
    const key = (list) => JSON.stringify([...list].sort((a, b) => a.path.localeCompare(b.path)));
    check(key(ids(info)) === key(volumes), `container ${id} changed behind this worker's back: ${key(ids(info))} vs ${key(volumes)}`);
  }
  print({ op: 'done', worker, live: [...mine.keys()] });
}

async function holdLockThroughLibrary(root, rootfsDir) {
  const rootfs = path.join(rootfsDir, 'holder');
  await fs.mkdir(rootfs, { recursive: true });
  // A mounter whose mount() never returns: runtime.mount() then holds the store lock for good.
  const stuck = {
    mount: () => {
      print({ op: 'locked', via: 'library', pid: process.pid });
      return new Promise(() => setInterval(() => undefined, 60_000));
    },
    unmount: async () => undefined,
    list: async () => [],
  };
  const runtime = new ContainerRuntime({ root, mounter: stuck });
  const { id } = await runtime.create({ rootfs, volumes: ['/data'] });
  await runtime.mount(id);
}

async function unmountPaused(root, rootfsDir) {
  const rootfs = path.join(rootfsDir, 'paused');
  const resumeFile = path.join(rootfsDir, 'resume');
  await fs.mkdir(rootfs, { recursive: true });
  const fake = new FakeMounter();
  let id;
  const pausing = {
    mount: (request) => fake.mount(request),
    list: (rootfs) => fake.list(rootfs),
    unmount: async (target) => {
      print({ op: 'unmounting', id });
      // Waits without ever yielding to the event loop, so that once resumed, the next
      // thing this process does is go on with the unmount, as a process paused anywhere
      // in it may (its lock's timers have had no turn to notice anything).
      const sleeper = new Int32Array(new SharedArrayBuffer(4));
      while (!existsSync(resumeFile)) Atomics.wait(sleeper, 0, 0, 10);
      return fake.unmount(target);
    },
  };
  const runtime = new ContainerRuntime({ root, mounter: pausing });
  ({ id } = await runtime.create({ rootfs, volumes: ['/data'] }));
  await runtime.mount(id);
  await runtime.unmount(id);
  print({ op: 'unmounted', id });
}

async function holdLockRaw(root) {
  const { default: lockfile } = await import('proper-lockfile');
  await fs.mkdir(root, { recursive: true });
  const realRoot = await fs.realpath(root);
  await lockfile.lock(realRoot, {
    lockfilePath: path.join(realRoot, 'lock'),
    realpath: false,
    stale: 5_000,
    update: 1_000,
  });
  print({ op: 'locked', via: 'proper-lockfile', pid: process.pid });
  setInterval(() => undefined, 60_000);
}

try {
  if (mode === 'ops') {
    const [root, rootfsDir, worker, operations] = args;
    await runOperations(root, rootfsDir, Number(worker), Number(operations));
  } else if (mode === 'hold-lock-library') {
    await holdLockThroughLibrary(args[0], args[1]);
  } else if (mode === 'unmount-paused') {
    await unmountPaused(args[0], args[1]);
  } else if (mode === 'hold-lock-raw') {
    await holdLockRaw(args[0]);
  } else {
    throw new WorkerFailure(`unknown mode ${JSON.stringify(mode)}`);
  }
} catch (error) {
  print({ op: 'error', code: error.code, message: error.stack ?? String(error) });
  process.exitCode = 1;
}

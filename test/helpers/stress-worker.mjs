#!/usr/bin/env node
// A separate process hammering a shared store with REAL bind mounts, for
// test/real/stress.test.ts. It uses the BUILT package (dist/), as another process of an
// application would, and inherits the test's private mount namespace.
//
//   node stress-worker.mjs ops <root> <rootfsDir> <worker> <operations> <log>
//     A seeded random mix of every operation, on any container of the store (its own
//     or another worker's). Appends one JSON line per operation to <log> as soon as it
//     is acknowledged (result or error, with start and end times), then a 'done' line.
//
//   node stress-worker.mjs create <root> <rootfs> <log>
//     One `create` with a volume at /data (copy-up of whatever the rootfs holds there);
//     logs 'start' before it and 'created' when it is acknowledged.
import fs from 'node:fs';
import path from 'node:path';
import { loadDist, random } from './worker.mjs';

const { ContainerRuntime, BindMounter } = await loadDist('stress-worker');

const [mode, ...args] = process.argv.slice(2);

/** Wall-clock milliseconds with sub-millisecond precision, comparable between processes. */
const now = () => performance.timeOrigin + performance.now();

/** Nested on purpose (/srv and /srv/cache): a child's mount point is made inside its parent volume. */
const PATHS = ['/data', '/var/log', '/srv', '/srv/cache', '/opt/app'];
/** Past this many containers in the store, a create becomes a remove, so the store stays busy but bounded. */
const MAX_LIVE = 24;
const WEIGHTS = [
  ['create', 14],
  ['createFrom', 10],
  ['createVolumes', 8],
  ['shareVolumesFrom', 8],
  ['mount', 16],
  ['unmount', 10],
  ['remove', 16],
  ['removeVolume', 7],
  ['prune', 5],
  ['list', 6],
];
const TOTAL_WEIGHT = WEIGHTS.reduce((sum, [, w]) => sum + w, 0);

const plain = (volumes) => volumes.map(({ path: p, volumeId, mode: m, origin }) => ({ path: p, volumeId, mode: m, origin }));

/** A fresh rootfs with content under some volume paths, so that copy-up has work to do. */
function makeRootfs(rootfsDir, name) {
  const rootfs = path.join(rootfsDir, name);
  fs.mkdirSync(path.join(rootfs, 'data'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'data', 'seed.txt'), `${name}\n`);
  fs.mkdirSync(path.join(rootfs, 'srv'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'srv', 'index.html'), '<h1>hi</h1>\n');
  fs.mkdirSync(path.join(rootfs, 'var/log'), { recursive: true });
  return rootfs;
}

async function runOperations(root, rootfsDir, worker, operations, log) {
  const rand = random(0xc0ffee + worker * 7919);
  const pick = (list) => list[Math.floor(rand() * list.length)];
  const pickPaths = (max, taken = []) => {
    const free = PATHS.filter((p) => !taken.includes(p));
    const n = Math.floor(rand() * (max + 1));
    const out = [];
    while (out.length < n && free.length > 0) out.push(...free.splice(Math.floor(rand() * free.length), 1));
    return out;
  };
  const pickOp = () => {
    let r = rand() * TOTAL_WEIGHT;
    for (const [op, w] of WEIGHTS) if ((r -= w) < 0) return op;
    return 'list';
  };
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  /** Also what an operation falls back to when it has nothing to work on. */
  const list = async (record) => {
    record.op = 'list';
    record.containers = (await runtime.list()).length;
    record.volumeCount = (await runtime.volumes.list()).length;
  };

  for (let i = 0; i < operations; i++) {
    // Targets come from what the store holds now, any worker's: they may be gone or
    // changed by the time the operation takes the lock, which is the point.
    const live = await runtime.list();
    let op = pickOp();
    if (live.length === 0 && !['create', 'prune', 'list', 'removeVolume'].includes(op)) op = 'create';
    if (live.length >= MAX_LIVE && (op === 'create' || op === 'createFrom')) op = 'remove';
    const target = pick(live);
    const record = { w: worker, i, op };
    const started = now();
    try {
      switch (op) {
        case 'create': {
          const info = await runtime.create({ rootfs: makeRootfs(rootfsDir, `w${worker}-${i}`), volumes: pickPaths(3) });
          Object.assign(record, { id: info.id, volumes: plain(info.volumes) });
          break;
        }
        case 'createFrom': {
          const from = `${target.id}${pick(['', ':ro', ':rw'])}`;
          const info = await runtime.create({
            rootfs: makeRootfs(rootfsDir, `w${worker}-${i}`),
            volumes: pickPaths(2),
            volumesFrom: [from],
          });
          Object.assign(record, { id: info.id, from, volumes: plain(info.volumes) });
          break;
        }
        case 'createVolumes': {
          const paths = pickPaths(2, target.volumes.map((v) => v.path));
          if (paths.length === 0) paths.push(pick(PATHS));
          record.id = target.id;
          record.added = plain(await runtime.createVolumes(target.id, paths));
          break;
        }
        case 'shareVolumesFrom': {
          const sources = live.filter((c) => c.id !== target.id);
          if (sources.length === 0) {
            await list(record);
            break;
          }
          const source = pick(sources);
          const shareMode = pick([undefined, 'ro', 'rw']);
          Object.assign(record, { id: target.id, from: source.id, mode: shareMode ?? null });
          record.added = plain(await runtime.shareVolumesFrom(target.id, source.id, shareMode ? { mode: shareMode } : undefined));
          break;
        }
        case 'mount':
          record.id = target.id;
          record.mounted = (await runtime.mount(target.id)).mounted;
          break;
        case 'unmount':
          record.id = target.id;
          record.mounted = (await runtime.unmount(target.id)).mounted;
          break;
        case 'remove': {
          const force = rand() < 0.5;
          const volumes = rand() < 0.7;
          Object.assign(record, { id: target.id, force, withVolumes: volumes });
          await runtime.remove(target.id, { force, volumes });
          break;
        }
        case 'removeVolume': {
          const volumes = await runtime.volumes.list();
          const unused = volumes.filter((v) => v.usedBy.length === 0);
          const chosen = pick(rand() < 0.6 && unused.length > 0 ? unused : volumes);
          if (!chosen) {
            await list(record);
            break;
          }
          record.volumeId = chosen.id;
          await runtime.volumes.remove(chosen.id);
          break;
        }
        case 'prune':
          record.removed = (await runtime.volumes.prune()).removed;
          break;
        case 'list':
          await list(record);
          break;
      }
      record.ok = true;
    } catch (error) {
      Object.assign(record, { ok: false, code: error?.code ?? null, message: String(error?.stack ?? error) });
    }
    Object.assign(record, { t0: started, t1: now() });
    fs.appendFileSync(log, `${JSON.stringify(record)}\n`);
  }
  fs.appendFileSync(log, `${JSON.stringify({ w: worker, op: 'done' })}\n`);
}

async function createOnce(root, rootfs, log) {
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  fs.appendFileSync(log, `${JSON.stringify({ op: 'start', pid: process.pid, t: Date.now() })}\n`);
  const info = await runtime.create({ rootfs, volumes: ['/data'] });
  fs.appendFileSync(log, `${JSON.stringify({ op: 'created', id: info.id, volumes: plain(info.volumes), t: Date.now() })}\n`);
}

if (mode === 'ops') {
  const [root, rootfsDir, worker, operations, log] = args;
  await runOperations(root, rootfsDir, Number(worker), Number(operations), log);
} else if (mode === 'create') {
  const [root, rootfs, log] = args;
  await createOnce(root, rootfs, log);
} else {
  process.stderr.write(`stress-worker: unknown mode ${JSON.stringify(mode)}\n`);
  process.exit(2);
}

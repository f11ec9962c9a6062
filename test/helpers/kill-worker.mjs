#!/usr/bin/env node
// A process doing random work on a store with real bind mounts until it is killed, for
// test/real/kill-harness.test.ts. It uses the BUILT package (dist/), as an orchestrator would.
//
//   node kill-worker.mjs <root> <seed> <tag> <rootfsParent>…
//
// With KILL_WORKER_OWN_NAMESPACE=1 it is run in a mount namespace of its own (see EXPECTED).
//
// Each new container gets a new rootfs directory, under one of the parents picked at random.
//
// Prints {"op":"ready"} once the library is loaded, then waits for a line "go" on stdin,
// so that the harness's kill lands during operations rather than while Node starts; then
// reads the store and prints {"op":"started"}. Then, forever: {"op":"begin",…} before
// each operation (stdout to a pipe is synchronous on Linux, so the line is out before
// the operation starts), and {"op":"ack",…} or {"op":"refused",…} after it. An error the
// library should never give here: {"op":"error"} and exit code 1.
import fs from 'node:fs';
import path from 'node:path';
import { loadDist, random } from './worker.mjs';

const { BindMounter, ContainerRuntime } = await loadDist('kill-worker');

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const [root, seedArg, tag, ...rootfsParents] = process.argv.slice(2);

// Nested paths make mounts of several levels, and parents that are mounted read-only over children.
const PATHS = ['/data', '/srv', '/srv/cache', '/srv/cache/tmp', '/var/log', '/var/lib/db', '/home/app'];

/**
 * Refusals that random work on a correct store can meet, by operation. A worker in a
 * mount namespace of its own (KILL_WORKER_OWN_NAMESPACE=1) also meets containers that
 * are mounted in the harness's namespace, which it must not touch, and copies of mounts.
 */
const ownNamespace = process.env.KILL_WORKER_OWN_NAMESPACE === '1';
const elsewhere = ownNamespace ? ['ERR_MOUNTED_IN_OTHER_NAMESPACE'] : [];
// Its namespace began as a copy of the harness's, mounts included: a volume the harness
// unmounted since may still be mounted here, and is then not deleted.
const copied = ownNamespace ? ['ERR_VOLUME_BUSY'] : [];
const EXPECTED = {
  // A volume below one shared read-only whose mount point is missing from it.
  create: ['ERR_MOUNT_POINT_READ_ONLY'],
  createVolumes: ['ERR_MOUNT_POINT_READ_ONLY'],
  mount: ['ERR_MOUNT_POINT_READ_ONLY', ...elsewhere],
  unmount: elsewhere,
  share: ['ERR_DUPLICATE_MOUNT_POINT', 'ERR_MOUNT_POINT_READ_ONLY'],
  remove: ['ERR_CONTAINER_MOUNTED', ...elsewhere, ...copied],
  removeVolume: ['ERR_VOLUME_IN_USE', ...copied],
};

async function waitForGo() {
  let buffered = '';
  process.stdin.setEncoding('utf8');
  for await (const chunk of process.stdin) {
    buffered += chunk;
    if (buffered.includes('go\n')) return;
  }
  // The harness went away before starting us.
  process.exit(0);
}

print({ op: 'ready', pid: process.pid });
await waitForGo();

const rand = random(Number(seedArg));
const pick = (list) => list[Math.floor(rand() * list.length)];
const chance = (p) => rand() < p;
const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });

/** What this process knows of the store: it is the only writer while it lives. */
const containers = new Map();
const volumes = new Set();
const remember = (info) => containers.set(info.id, { id: info.id, mounted: info.mounted, volumes: info.volumes.map(({ path: p, volumeId, mode }) => ({ path: p, volumeId, mode })) });
for (const info of await runtime.list()) remember(info);
for (const name of fs.readdirSync(path.join(root, 'volumes'))) volumes.add(name);
print({ op: 'started' });

let made = 0;
function newRootfs() {
  const rootfs = path.join(pick(rootfsParents), `${tag}-${made++}`);
  // Content at volume paths, so copy-up has something to copy.
  fs.mkdirSync(path.join(rootfs, 'srv/cache'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'srv/index.html'), 'hello\n');
  fs.writeFileSync(path.join(rootfs, 'srv/cache/entry'), 'cached\n');
  fs.mkdirSync(path.join(rootfs, 'var/log'), { recursive: true });
  fs.writeFileSync(path.join(rootfs, 'var/log/boot.log'), 'booted\n');
  return rootfs;
}

function pickPaths(max, taken = []) {
  const free = PATHS.filter((p) => !taken.includes(p));
  const out = [];
  const n = Math.floor(rand() * (max + 1));
  while (out.length < n && free.length > 0) out.push(...free.splice(Math.floor(rand() * free.length), 1));
  return out;
}

const refs = (list) => list.map(({ path: p, volumeId, mode }) => ({ path: p, volumeId, mode }));

/** Each operation: its weight given the store's size, and how to run it. */
const OPERATIONS = {
  create: {
    weight: (n) => (n < 4 ? 5 : n > 16 ? 0.3 : 2.5),
    async run(begin) {
      const rootfs = newRootfs();
      const sources = [...containers.keys()].filter(() => chance(0.15)).slice(0, 2);
      const volumesFrom = sources.map((id) => `${id}${pick(['', ':ro', ':rw'])}`);
      const spec = { rootfs, volumes: pickPaths(3), volumesFrom, copyUp: chance(0.8) };
      begin({ rootfs, volumesFrom });
      const info = await runtime.create(spec);
      remember(info);
      for (const v of info.volumes) volumes.add(v.volumeId);
      return { id: info.id, volumes: refs(info.volumes) };
    },
  },
  createVolumes: {
    weight: () => 1,
    async run(begin) {
      const target = pick([...containers.values()].filter((c) => !c.mounted));
      if (!target) return undefined;
      const paths = pickPaths(1, target.volumes.map((v) => v.path));
      if (paths.length === 0) return undefined;
      begin({ id: target.id, paths });
      const added = await runtime.createVolumes(target.id, paths);
      target.volumes.push(...refs(added));
      for (const v of added) volumes.add(v.volumeId);
      return { id: target.id, volumes: refs(added) };
    },
  },
  share: {
    weight: () => 1,
    async run(begin) {
      const target = pick([...containers.values()].filter((c) => !c.mounted));
      const source = pick([...containers.keys()].filter((id) => id !== target?.id));
      if (!target || !source) return undefined;
      const mode = pick(['rw', 'ro']);
      begin({ id: target.id, source, mode });
      const added = await runtime.shareVolumesFrom(target.id, source, { mode });
      target.volumes.push(...refs(added));
      return { id: target.id, volumes: refs(added) };
    },
  },
  mount: {
    weight: () => 3,
    async run(begin) {
      const target = pick([...containers.values()]);
      if (!target) return undefined;
      begin({ id: target.id });
      const info = await runtime.mount(target.id);
      target.mounted = info.mounted;
      return { id: target.id, mounted: info.mounted };
    },
  },
  unmount: {
    weight: () => 2,
    async run(begin) {
      const mounted = [...containers.values()].filter((c) => c.mounted);
      const target = chance(0.9) ? pick(mounted) : pick([...containers.values()]);
      if (!target) return undefined;
      begin({ id: target.id });
      const info = await runtime.unmount(target.id);
      target.mounted = info.mounted;
      return { id: target.id, mounted: info.mounted };
    },
  },
  remove: {
    weight: (n) => (n > 16 ? 6 : 1.5),
    async run(begin) {
      const target = pick([...containers.values()]);
      if (!target) return undefined;
      const options = { force: chance(0.7), volumes: chance(0.6) };
      begin({ id: target.id, force: options.force, withVolumes: options.volumes, named: target.volumes.map((v) => v.volumeId) });
      await runtime.remove(target.id, options);
      containers.delete(target.id);
      if (options.volumes) {
        const stillNamed = new Set([...containers.values()].flatMap((c) => c.volumes.map((v) => v.volumeId)));
        for (const v of target.volumes) if (!stillNamed.has(v.volumeId)) volumes.delete(v.volumeId);
      }
      return { id: target.id };
    },
  },
  removeVolume: {
    weight: () => 0.7,
    async run(begin) {
      const volumeId = pick([...volumes]);
      if (!volumeId) return undefined;
      begin({ volumeId });
      await runtime.volumes.remove(volumeId);
      volumes.delete(volumeId);
      return { volumeId };
    },
  },
  prune: {
    weight: () => 0.5,
    async run(begin) {
      begin({});
      const { removed } = await runtime.volumes.prune();
      for (const id of removed) volumes.delete(id);
      return { removed };
    },
  },
};

function choose() {
  const n = containers.size;
  const entries = Object.entries(OPERATIONS).map(([kind, op]) => [kind, op.weight(n)]);
  let r = rand() * entries.reduce((sum, [, w]) => sum + w, 0);
  for (const [kind, w] of entries) {
    r -= w;
    if (r < 0) return kind;
  }
  return 'create';
}

for (let seq = 0; ; seq++) {
  const kind = choose();
  let begun = false;
  const begin = (args) => {
    begun = true;
    print({ op: 'begin', seq, kind, ...args });
  };
  try {
    const result = await OPERATIONS[kind].run(begin);
    if (begun) print({ op: 'ack', seq, kind, ...result });
  } catch (error) {
    if (begun && EXPECTED[kind]?.includes(error.code)) {
      print({ op: 'refused', seq, kind, code: error.code });
      continue;
    }
    print({ op: 'error', seq, kind, code: error.code, message: error.stack ?? String(error) });
    process.exit(1);
  }
}

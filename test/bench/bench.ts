// `npm run bench`: latency and throughput of the library at several store sizes, side by
// side with Podman when it is installed, checked against the library's performance targets.
//
//   npm run bench                      sizes 10,1000,10000
//   npm run bench -- --quick           sizes 10,200, few iterations (CI smoke run)
//   npm run bench -- --sizes 10,500 --iterations 50 --no-podman --json out.json
//   npm run bench -- --sizes 10 --no-podman --ops "10 volumes"   only some rows
//
// It imports the built package (dist/), as a user would, so it measures what ships.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { BindMounter, ContainerRuntime, FakeMounter, type ContainerInfo } from '../../dist/index.js';

// ---------------------------------------------------------------------------------------
// Options

const USAGE = `usage: npm run bench -- [--sizes 10,1000,10000] [--iterations N] [--budget SECONDS]
                       [--podman-iterations N] [--quick] [--no-podman] [--json FILE]
                       [--ops TEXT,...]   only the operations whose name contains one of the texts`;

interface Options {
  sizes: number[];
  iterations: number;
  /** Per operation and size: stop adding iterations once this much wall time is spent (O(n) operations at 10 000). */
  budgetMs: number;
  /** Even past the budget, so that a p95 is not just one sample. */
  minIterations: number;
  warmup: number;
  podmanIterations: number;
  podman: boolean;
  json: string | undefined;
  quick: boolean;
  /** Only the operations whose name contains one of these (all when empty). */
  ops: string[];
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      sizes: { type: 'string' },
      iterations: { type: 'string' },
      budget: { type: 'string' },
      'podman-iterations': { type: 'string' },
      quick: { type: 'boolean', default: false },
      'no-podman': { type: 'boolean', default: false },
      json: { type: 'string' },
      ops: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const quick = values.quick ?? false;
  const positive = (given: string | undefined, name: string, fallback: number): number => {
    if (given === undefined) return fallback;
    const n = Number(given);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${given}\n${USAGE}`);
    return n;
  };
  const sizes = (values.sizes ?? (quick ? '10,200' : '10,1000,10000')).split(',').map((s) => positive(s.trim(), 'sizes', 0));
  // Ascending and distinct: one store is grown from each size to the next.
  const ascending = [...new Set(sizes.map((n) => Math.floor(n)))].sort((a, b) => a - b);
  return {
    sizes: ascending,
    iterations: Math.floor(positive(values.iterations, 'iterations', quick ? 10 : 100)),
    budgetMs: positive(values.budget, 'budget', quick ? 1 : 10) * 1000,
    minIterations: 3,
    warmup: quick ? 1 : 3,
    podmanIterations: Math.floor(positive(values['podman-iterations'], 'podman-iterations', quick ? 3 : 15)),
    podman: !(values['no-podman'] ?? false),
    json: values.json,
    quick,
    ops: (values.ops ?? '').split(',').map((o) => o.trim()).filter(Boolean),
  };
}

// ---------------------------------------------------------------------------------------
// Private mount namespace: real mounts must never be able to leak onto the host, even if
// the bench dies half-way, so as root it runs itself again under `unshare -m`.

const HOST_NS_ENV = 'CONTAINER_VOLUMES_BENCH_HOST_MNT_NS';
const isRoot = process.platform === 'linux' && process.getuid?.() === 0;

function mountNamespace(): string {
  return fs.readlinkSync('/proc/self/ns/mnt');
}

function reexecInPrivateNamespace(): void {
  if (!isRoot || process.env[HOST_NS_ENV] !== undefined) return;
  const probe = spawnSync('unshare', ['-m', '--propagation', 'private', 'true'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    const why = probe.error?.message ?? probe.stderr.trim();
    process.env[HOST_NS_ENV] = `unavailable: unshare -m failed: ${why}`;
    return;
  }
  // The parent only waits: a Ctrl-C reaches the child too, which cleans up and exits.
  process.on('SIGINT', () => {});
  process.on('SIGTERM', () => {});
  const child = spawnSync(
    'unshare',
    ['-m', '--propagation', 'private', '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)],
    { stdio: 'inherit', env: { ...process.env, [HOST_NS_ENV]: mountNamespace() } },
  );
  process.exit(child.status ?? 128 + (child.signal ? os.constants.signals[child.signal] : 1));
}

/** Why real mounts cannot be measured here, or undefined when they can. */
function realMountsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (!isRoot) return 'not root';
  const host = process.env[HOST_NS_ENV];
  if (host === undefined) return 'not in a private mount namespace';
  if (host.startsWith('unavailable')) return host.slice('unavailable: '.length);
  if (host === mountNamespace()) return 'unshare did not give a private mount namespace';
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Measuring

interface Stats {
  n: number;
  medianMs: number;
  p95Ms: number;
  meanMs: number;
  opsPerSec: number;
}

function stats(samples: number[]): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  // Nearest rank: a percentile that is one of the measured samples, never interpolated.
  const rank = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] as number;
  const mid = sorted.length / 2;
  const median = sorted.length % 2 === 1 ? (sorted[Math.floor(mid)] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { n: sorted.length, medianMs: median, p95Ms: rank(0.95), meanMs: mean, opsPerSec: 1000 / mean };
}

interface Bench<T> {
  /** Untimed: what one iteration needs (a container to remove, volumes to prune). */
  setup?: () => Promise<T>;
  run: (input: T) => Promise<void>;
  /** Untimed: puts the store back to its size, so that iterations do not grow it. */
  teardown?: (input: T) => Promise<void>;
}

interface Limits {
  iterations: number;
  budgetMs: number;
  minIterations: number;
  warmup: number;
}

async function measure<T>(bench: Bench<T>, limits: Limits): Promise<Stats> {
  const once = async (): Promise<number> => {
    stopIfInterrupted();
    const input = (await bench.setup?.()) as T;
    const start = performance.now();
    await bench.run(input);
    const elapsed = performance.now() - start;
    await bench.teardown?.(input);
    return elapsed;
  };
  // Warm-up is cut short for slow operations (recover of 10 000 containers): its only
  // purpose is to get the JIT and the file system caches going.
  const warming = performance.now();
  for (let i = 0; i < limits.warmup && performance.now() - warming < limits.budgetMs / 5; i++) await once();
  const samples: number[] = [];
  const began = performance.now();
  while (samples.length < limits.iterations) {
    samples.push(await once());
    if (samples.length >= limits.minIterations && performance.now() - began > limits.budgetMs) break;
  }
  return stats(samples);
}

/** A bench with its input type closed over, so benches of different inputs fit in one list. */
type Job = (limits: Limits) => Promise<Stats>;

function job<T>(bench: Bench<T>): Job {
  return (limits) => measure(bench, limits);
}

/** Set by SIGINT/SIGTERM: the run stops at the next iteration and cleans up, rather than deleting files under a running operation. */
let interrupted: NodeJS.Signals | undefined;

function stopIfInterrupted(): void {
  if (interrupted) throw new Error(`interrupted by ${interrupted}`);
}

/** One line about a failure; for a command, what it wrote last on stderr, which says why. */
function describeError(error: unknown): string {
  const first = (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
  const stderr = (error as { stderr?: unknown }).stderr;
  const last = typeof stderr === 'string' ? stderr.trim().split('\n').pop() : undefined;
  return last ? `${first}: ${last}` : first;
}

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`bench sanity check failed: ${what}`);
}

// ---------------------------------------------------------------------------------------
// Results

interface Row {
  op: string;
  size: number;
  stats?: Stats;
  /** Why there is no number: 'n/a …' (not measurable here) or 'ERROR …'. */
  note?: string;
}

interface PodmanResult {
  op: string;
  stats?: Stats;
  note?: string;
}

interface Target {
  name: string;
  pass: boolean | undefined;
  detail: string;
}

const OPS = {
  create1: 'create (1 volume)',
  addVolume: 'add 1 volume (createVolumes)',
  create10: 'create (10 volumes)',
  share: 'share (volumesFrom a 10-volume container)',
  mountFake: 'mount+unmount 10 volumes (fake)',
  baseline: 'baseline: 1 mount --bind + umount',
  syscallFloor: 'floor: 10 binds+unmounts, bare system calls',
  mountKernel: 'mount+unmount 10 volumes (BindMounter, kernel)',
  mountReal: 'mount+unmount 10 volumes (BindMounter, util-linux)',
  remove: 'remove -v (10 volumes)',
  prune: 'prune (3 unreferenced volumes)',
  list: 'list containers',
  listVolumes: 'list volumes',
  recoverFake: 'recover (fake)',
  recoverKernel: 'recover (BindMounter, kernel)',
  recoverReal: 'recover (BindMounter, util-linux)',
  createShareRemove: 'create+share+remove (fake)',
} as const;

/** Operations on one container: their cost must not grow with the store (the 2× target). list and recover are O(store) by nature. */
const PER_CONTAINER_OPS: string[] = [
  OPS.create1,
  OPS.addVolume,
  OPS.create10,
  OPS.share,
  OPS.mountFake,
  OPS.mountKernel,
  OPS.mountReal,
  OPS.remove,
  OPS.prune,
  OPS.createShareRemove,
];

const PODMAN = {
  volumeCli: 'podman volume create (CLI)',
  volumeRest: 'podman volume create (REST, warm)',
  create10: 'podman create -v ×10',
  share: 'podman create --volumes-from (10 volumes)',
  remove: 'podman rm -v (10 volumes)',
  createShareRemove: 'podman create+share+rm -v',
} as const;

/** Which Podman measurement each of our operations is compared with. */
const PODMAN_EQUIVALENT: Record<string, string> = {
  [OPS.create1]: PODMAN.volumeRest,
  [OPS.addVolume]: PODMAN.volumeRest,
  [OPS.create10]: PODMAN.create10,
  [OPS.share]: PODMAN.share,
  [OPS.remove]: PODMAN.remove,
  [OPS.createShareRemove]: PODMAN.createShareRemove,
};

// ---------------------------------------------------------------------------------------
// Temp dir and cleanup

let workDir: string | undefined;
const cleanups: (() => Promise<void>)[] = [];
let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const step of cleanups.reverse()) {
      try {
        await step();
      } catch (error) {
        console.error(`cleanup: ${(error as Error).message}`);
      }
    }
  })();
  return cleaning;
}

function decodeMountinfoPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Detaches whatever is still mounted under `dir` (a failed run, Podman's storage), deepest first, so it can be deleted. */
async function unmountEverythingUnder(dir: string): Promise<void> {
  if (!isRoot) return;
  const prefix = `${dir}/`;
  const points = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((field): field is string => field !== undefined)
    .map(decodeMountinfoPath)
    .filter((point) => point === dir || point.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
  for (const point of points) await execa('umount', ['-l', point], { reject: false, stdin: 'ignore' });
}

// ---------------------------------------------------------------------------------------
// The library

interface Fixtures {
  /** The store's pre-populated containers that others may share from (no shared volumes of their own). */
  sources: string[];
  prepopulated: number;
  volumes: number;
}

/** A small deterministic generator: the same store shape on every run. */
function lcg(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

const random = lcg(20131);

/**
 * Grows the store to `target` pre-populated containers through the public API: each has
 * one or two volumes of its own and one in four also shares the volumes of an earlier one
 * (every other of those read-only). Returns the wall time it took.
 */
async function prepopulate(runtime: ContainerRuntime, rootfsDir: string, fixtures: Fixtures, target: number): Promise<number> {
  const start = performance.now();
  for (let i = fixtures.prepopulated; i < target; i++) {
    stopIfInterrupted();
    const rootfs = path.join(rootfsDir, `p${i}`);
    await fsp.mkdir(rootfs);
    const sharer = i % 4 === 3 && fixtures.sources.length > 0;
    // Sharers get their own volumes at other paths, so a shared path never hides them.
    const own = sharer ? ['/srv/cache', '/srv/tmp'] : ['/data', '/var/log'];
    const volumes = i % 3 === 0 ? own : own.slice(0, 1);
    const volumesFrom: string[] = [];
    if (sharer) {
      const source = fixtures.sources[Math.floor(random() * fixtures.sources.length)] as string;
      volumesFrom.push(i % 8 === 7 ? `${source}:ro` : source);
    }
    const info = await runtime.create({ rootfs, volumes, volumesFrom });
    check(info.volumes.length >= volumes.length, `pre-populated container ${i} has its volumes`);
    if (!sharer) fixtures.sources.push(info.id);
    fixtures.volumes += volumes.length;
    fixtures.prepopulated++;
  }
  return performance.now() - start;
}

const TEN_PATHS = Array.from({ length: 10 }, (_, i) => `/vol/${i}`);

interface LibraryContext {
  fake: ContainerRuntime;
  fakeMounter: FakeMounter;
  /** Real mounts through each engine of BindMounter, on the same store. */
  real: ContainerRuntime | undefined;
  kernel: ContainerRuntime | undefined;
  /** An empty rootfs for the containers iterations make and remove: they are never mounted. */
  scratchRootfs: string;
  /** Where the baseline bind mount is made. */
  baselineDir: string;
  source10: ContainerInfo;
  fakeMount10: ContainerInfo;
  realMount10: ContainerInfo | undefined;
  kernelMount10: ContainerInfo | undefined;
}

type Recover = () => Promise<unknown>;

/** `recover()` is newer than the rest of the API: measured only when the built package has it. */
function recoverOf(runtime: ContainerRuntime): Recover | undefined {
  const candidate = (runtime as unknown as { recover?: unknown }).recover;
  return typeof candidate === 'function' ? (candidate as Recover).bind(runtime) : undefined;
}

async function benchLibrary(lib: LibraryContext, size: number, limits: Limits, realUnavailable: string | undefined, only: string[]): Promise<Row[]>{
  const rows: Row[] = [];
  const { fake, real, scratchRootfs: rootfs } = lib;
  const removeWithVolumes = (info: ContainerInfo) => fake.remove(info.id, { volumes: true });

  // Set by the run of the create benches, read by their teardown.
  let created!: ContainerInfo;
  const benches: [string, Job | string][] = [
    [
      OPS.create1,
      job({
        run: async () => {
          created = await fake.create({ rootfs, volumes: ['/data'] });
          check(created.volumes.length === 1, 'create made one volume');
        },
        teardown: async () => removeWithVolumes(created),
      }),
    ],
    [
      OPS.addVolume,
      job({
        setup: () => fake.create({ rootfs }),
        run: async (info: ContainerInfo) => {
          const added = await fake.volumes.createVolumes(info.id, ['/data']);
          check(added.length === 1, 'createVolumes made one volume');
        },
        teardown: removeWithVolumes,
      }),
    ],
    [
      OPS.create10,
      job({
        run: async () => {
          created = await fake.create({ rootfs, volumes: TEN_PATHS });
          check(created.volumes.length === 10, 'create made ten volumes');
        },
        teardown: async () => removeWithVolumes(created),
      }),
    ],
    [
      OPS.share,
      job({
        run: async () => {
          created = await fake.create({ rootfs, volumesFrom: [lib.source10.id] });
          check(created.volumes.length === 10, 'share gave ten volumes');
        },
        teardown: async () => removeWithVolumes(created),
      }),
    ],
    [
      OPS.mountFake,
      job({
        run: async () => {
          await fake.mount(lib.fakeMount10.id);
          await fake.unmount(lib.fakeMount10.id);
        },
        // The fake records every call; keep that from growing over thousands of iterations.
        teardown: async () => lib.fakeMounter.clearCalls(),
      }),
    ],
    // Measured next to the real mounts, at every size, so that both see the same load on the machine.
    [OPS.baseline, real ? baselineBind(lib.baselineDir) : `n/a (${realUnavailable ?? 'no real mounter'})`],
    [OPS.syscallFloor, real ? syscallFloor(lib.baselineDir) : `n/a (${realUnavailable ?? 'no real mounter'})`],
    [
      OPS.mountKernel,
      lib.kernel && lib.kernelMount10
        ? job({
            run: async () => {
              const id = (lib.kernelMount10 as ContainerInfo).id;
              const mounted = await (lib.kernel as ContainerRuntime).mount(id);
              check(mounted.mounted, 'mount marks the container mounted');
              await (lib.kernel as ContainerRuntime).unmount(id);
            },
          })
        : `n/a (${realUnavailable ?? 'the kernel engine cannot run here'})`,
    ],
    [
      OPS.mountReal,
      real && lib.realMount10
        ? job({
            run: async () => {
              const id = (lib.realMount10 as ContainerInfo).id;
              const mounted = await real.mount(id);
              check(mounted.mounted, 'mount marks the container mounted');
              await real.unmount(id);
            },
          })
        : `n/a (${realUnavailable ?? 'no real mounter'})`,
    ],
    [
      OPS.remove,
      job({
        setup: () => fake.create({ rootfs, volumes: TEN_PATHS }),
        run: async (info: ContainerInfo) => fake.remove(info.id, { volumes: true }),
      }),
    ],
    [
      OPS.prune,
      job({
        // A container removed without its volumes leaves them unreferenced: prune's work.
        setup: async () => {
          const info = await fake.create({ rootfs, volumes: ['/a', '/b', '/c'] });
          await fake.remove(info.id);
        },
        run: async () => {
          const { removed } = await fake.volumes.prune();
          check(removed.length === 3, `prune removed the 3 unreferenced volumes (removed ${removed.length})`);
        },
      }),
    ],
    [
      OPS.list,
      job({
        run: async () => {
          const all = await fake.list();
          check(all.length >= size, 'list sees every container');
        },
      }),
    ],
    [
      OPS.listVolumes,
      job({
        run: async () => {
          const all = await fake.volumes.list();
          check(all.length >= size, 'volumes.list sees every volume');
        },
      }),
    ],
    [OPS.recoverFake, recoverBench(recoverOf(fake))],
    [OPS.recoverKernel, lib.kernel ? recoverBench(recoverOf(lib.kernel)) : `n/a (${realUnavailable ?? 'the kernel engine cannot run here'})`],
    [
      OPS.recoverReal,
      real ? recoverBench(recoverOf(real)) : `n/a (${realUnavailable ?? 'no real mounter'})`,
    ],
    [
      OPS.createShareRemove,
      job({
        run: async () => {
          const a = await fake.create({ rootfs, volumes: ['/data'] });
          const b = await fake.create({ rootfs, volumesFrom: [a.id] });
          await fake.remove(b.id, { volumes: true });
          await fake.remove(a.id, { volumes: true });
        },
      }),
    ],
  ];

  for (const [op, bench] of benches) {
    if (only.length > 0 && !only.some((text) => op.includes(text))) continue;
    if (typeof bench === 'string') {
      rows.push({ op, size, note: bench });
      continue;
    }
    try {
      const result = await bench(limits);
      rows.push({ op, size, stats: result });
      progress(`  ${op.padEnd(42)} median ${fmt(result.medianMs)} ms  p95 ${fmt(result.p95Ms)} ms  (n=${result.n})`);
    } catch (error) {
      if (interrupted) throw error;
      const message = describeError(error);
      rows.push({ op, size, note: `ERROR ${message}` });
      progress(`  ${op.padEnd(42)} ERROR ${message}`);
    }
  }
  return rows;
}

function recoverBench(recover: Recover | undefined): Job | string {
  if (!recover) return 'n/a (no runtime.recover in this build)';
  return job({ run: async () => void (await recover()) });
}

/** One bind mount and its unmount, each a process spawned from Node: what a mount of a whole container is held to. */
function baselineBind(dir: string): Job {
  const source = path.join(dir, 'source');
  const target = path.join(dir, 'target');
  // The same execa options as BindMounter, so the baseline differs only in what is asked of mount.
  const options = { stdin: 'ignore', env: { LC_ALL: 'C' } } as const;
  let made = false;
  return job({
    setup: async () => {
      if (made) return;
      await fsp.mkdir(source, { recursive: true });
      await fsp.mkdir(target, { recursive: true });
      made = true;
    },
    run: async () => {
      await execa('mount', ['--bind', source, target], options);
      await execa('umount', [target], options);
    },
  });
}

/**
 * The same ten binds and unmounts as a container mount, as bare system calls through
 * koffi with no checks and no bookkeeping (the kernel engine's pipeline): the floor any
 * real mounter stands on.
 */
function syscallFloor(dir: string): Job | string {
  let koffi: { load(name: string): { func(prototype: string): (...args: unknown[]) => number } };
  try {
    koffi = createRequire(import.meta.url)('koffi');
  } catch (error) {
    return `n/a (koffi: ${describeError(error)})`;
  }
  const libc = koffi.load('libc.so.6');
  const syscall = libc.func('long syscall(long number, ...)');
  const umount2 = libc.func('int umount2(const char *target, int flags)');
  const close = libc.func('int close(int fd)');
  // linux/fcntl.h, linux/mount.h, linux/openat2.h; system call numbers from asm-generic/unistd.h.
  const [O_PATH, O_CLOEXEC, AT_FDCWD, OPEN_TREE_CLONE, MOVE_EMPTY_PATHS, AT_EMPTY_PATH, MS_PRIVATE] = [0o10000000, 0o2000000, -100, 1, 0x44, 0x1000, 1 << 18];
  const [RDONLY_NOSUID_NODEV, IN_ROOT_NO_MAGICLINKS, MNT_DETACH] = [0x7, 0x12, 2];
  const openHow = Buffer.alloc(24);
  openHow.writeBigUInt64LE(BigInt(O_PATH | fs.constants.O_DIRECTORY | O_CLOEXEC), 0);
  openHow.writeBigUInt64LE(BigInt(IN_ROOT_NO_MAGICLINKS), 16);
  const attr = Buffer.alloc(32);
  attr.writeBigUInt64LE(BigInt(RDONLY_NOSUID_NODEV), 0);
  attr.writeBigUInt64LE(BigInt(MS_PRIVATE), 16);
  const source = path.join(dir, 'floor-source');
  const rootfs = path.join(dir, 'floor-rootfs');
  let root = -1;
  return job({
    setup: async () => {
      if (root >= 0) return;
      await fsp.mkdir(source, { recursive: true });
      for (const p of TEN_PATHS) await fsp.mkdir(path.join(rootfs, p), { recursive: true });
      root = fs.openSync(rootfs, O_PATH | fs.constants.O_DIRECTORY);
    },
    run: async () => {
      for (const p of TEN_PATHS) {
        const target = syscall(437, 'int', root, 'const char *', p, 'void *', openHow, 'size_t', 24);
        const tree = syscall(428, 'int', AT_FDCWD, 'const char *', source, 'unsigned int', OPEN_TREE_CLONE | O_CLOEXEC);
        check(target >= 0 && tree >= 0, 'openat2 and open_tree succeed');
        check(syscall(442, 'int', tree, 'const char *', '', 'unsigned int', AT_EMPTY_PATH, 'void *', attr, 'size_t', 32) === 0, 'mount_setattr succeeds');
        check(syscall(429, 'int', tree, 'const char *', '', 'int', target, 'const char *', '', 'unsigned int', MOVE_EMPTY_PATHS) === 0, 'move_mount succeeds');
        close(tree);
        close(target);
      }
      for (const p of [...TEN_PATHS].reverse()) check(umount2(path.join(rootfs, p), MNT_DETACH) === 0, 'umount2 succeeds');
    },
  });
}

// ---------------------------------------------------------------------------------------
// Podman, in a store of its own under the temp dir so the host's containers, images and
// volumes are untouched.

const PODMAN_IMAGE = 'localhost/container-volumes-bench:latest';
/** Debian's podman needs these here: crun fails on hybrid cgroups, and the default ulimits are refused. */
const PODMAN_CREATE = ['create', '--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768'];

async function benchPodman(dir: string, iterations: number, limits: Limits): Promise<{ results: PodmanResult[]; version: string }> {
  const version = (await execa('podman', ['--version'], { stdin: 'ignore' })).stdout.trim();
  const global = [
    '--root', path.join(dir, 'root'),
    '--runroot', path.join(dir, 'runroot'),
    '--tmpdir', path.join(dir, 'tmp'),
    '--volumepath', path.join(dir, 'volumes'),
    '--runtime', 'runc',
  ];
  const podman = async (...args: string[]) => (await execa('podman', [...global, ...args], { stdin: 'ignore' })).stdout.trim();

  // Everything Podman made lives under `dir`; still remove it through Podman first, since
  // container locks are allocated in the host-wide /dev/shm/libpod_lock.
  cleanups.push(async () => {
    await execa('podman', [...global, 'rm', '--all', '--force', '--volumes'], { reject: false, stdin: 'ignore' });
    await execa('podman', [...global, 'volume', 'rm', '--all', '--force'], { reject: false, stdin: 'ignore' });
    await execa('podman', [...global, 'rmi', '--all', '--force'], { reject: false, stdin: 'ignore' });
  });

  // A tiny local image: no registry is reachable, and nothing here runs the container.
  const image = path.join(dir, 'image');
  await fsp.mkdir(path.join(image, 'bin'), { recursive: true });
  await fsp.copyFile('/bin/busybox', path.join(image, 'bin', 'busybox'));
  await fsp.symlink('busybox', path.join(image, 'bin', 'sh'));
  const tarball = path.join(dir, 'image.tar');
  await execa('tar', ['-C', image, '-cf', tarball, 'bin'], { stdin: 'ignore' });
  await podman('import', tarball, PODMAN_IMAGE);

  const podmanLimits: Limits = { ...limits, iterations, warmup: 1, minIterations: Math.min(3, iterations) };
  const results: PodmanResult[] = [];
  const record = async (op: string, fn: () => Promise<Stats>) => {
    try {
      const result = await fn();
      results.push({ op, stats: result });
      progress(`  ${op.padEnd(42)} median ${fmt(result.medianMs)} ms  p95 ${fmt(result.p95Ms)} ms  (n=${result.n})`);
    } catch (error) {
      if (interrupted) throw error;
      const message = describeError(error);
      results.push({ op, note: `ERROR ${message}` });
      progress(`  ${op.padEnd(42)} ERROR ${message}`);
    }
  };

  await record(PODMAN.volumeCli, () => measure({ run: async () => void (await podman('volume', 'create')) }, podmanLimits));
  await record(PODMAN.volumeRest, () => benchPodmanRest(dir, global, { ...limits, iterations: Math.max(iterations, 20), warmup: 5 }));

  // One loop gives three numbers: the 10-volume container is made, shared, and removed.
  const create10: number[] = [];
  const share: number[] = [];
  const remove: number[] = [];
  const timed = async <T>(samples: number[], fn: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    const value = await fn();
    samples.push(performance.now() - start);
    return value;
  };
  const volumeArgs = TEN_PATHS.flatMap((p) => ['-v', p]);
  try {
    for (let i = 0; i < iterations + 1; i++) {
      stopIfInterrupted();
      const id = await timed(create10, () => podman(...PODMAN_CREATE, ...volumeArgs, PODMAN_IMAGE, '/bin/sh'));
      const sharer = await timed(share, () => podman(...PODMAN_CREATE, '--volumes-from', id, PODMAN_IMAGE, '/bin/sh'));
      await podman('rm', '-v', sharer);
      await timed(remove, () => podman('rm', '-v', id));
    }
    // The first round warms Podman's caches, as the warm-up of every other measurement does.
    for (const samples of [create10, share, remove]) samples.shift();
    results.push({ op: PODMAN.create10, stats: stats(create10) }, { op: PODMAN.share, stats: stats(share) }, { op: PODMAN.remove, stats: stats(remove) });
    for (const { op, stats: s } of results.slice(-3)) progress(`  ${op.padEnd(42)} median ${fmt(s?.medianMs)} ms  p95 ${fmt(s?.p95Ms)} ms  (n=${s?.n})`);
  } catch (error) {
    if (interrupted) throw error;
    const note = `ERROR ${describeError(error)}`;
    results.push({ op: PODMAN.create10, note }, { op: PODMAN.share, note }, { op: PODMAN.remove, note });
    progress(`  podman create/share/rm: ${note}`);
  }

  await record(PODMAN.createShareRemove, () =>
    measure(
      {
        run: async () => {
          const a = await podman(...PODMAN_CREATE, '-v', '/data', PODMAN_IMAGE, '/bin/sh');
          const b = await podman(...PODMAN_CREATE, '--volumes-from', a, PODMAN_IMAGE, '/bin/sh');
          await podman('rm', '-v', b);
          await podman('rm', '-v', a);
        },
      },
      podmanLimits,
    ),
  );
  return { results, version };
}

/** `POST /libpod/volumes/create` on a warm `podman system service`, over a kept-alive unix socket connection: Podman at its fastest. */
async function benchPodmanRest(dir: string, global: string[], limits: Limits): Promise<Stats> {
  const socketPath = path.join(dir, 'podman.sock');
  const service: ChildProcess = spawn('podman', [...global, 'system', 'service', '--time=0', `unix://${socketPath}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let serviceErrors = '';
  service.stderr?.on('data', (chunk: Buffer) => (serviceErrors = (serviceErrors + chunk.toString()).slice(-2000)));
  const stopService = async () => {
    if (service.exitCode !== null || service.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => service.once('exit', () => resolve()));
    service.kill('SIGTERM');
    const timer = setTimeout(() => service.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };
  cleanups.push(stopService);

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const request = (method: string, url: string, body?: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(
        { socketPath, method, path: url, agent, headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });

  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (service.exitCode !== null) throw new Error(`podman system service exited: ${serviceErrors.trim()}`);
      const ping = await request('GET', '/v4.0.0/libpod/_ping').catch(() => undefined);
      if (ping?.status === 200) break;
      if (Date.now() > deadline) throw new Error(`podman system service did not answer on ${socketPath}: ${serviceErrors.trim()}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return await measure(
      {
        run: async () => {
          const { status, body } = await request('POST', '/v4.0.0/libpod/volumes/create', '{}');
          if (status !== 201) throw new Error(`POST /libpod/volumes/create answered ${status}: ${body.trim()}`);
        },
      },
      limits,
    );
  } finally {
    agent.destroy();
    await stopService();
  }
}

// ---------------------------------------------------------------------------------------
// Output

function fmt(value: number | undefined, digits?: number): string {
  if (value === undefined || !Number.isFinite(value)) return '–';
  const d = digits ?? (value >= 100 ? 0 : value >= 10 ? 1 : value >= 1 ? 2 : 3);
  return value.toFixed(d);
}

function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}

function table(header: string[], rows: string[][], rightAligned: boolean[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (rightAligned[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

function median(rows: Row[], op: string, size: number): number | undefined {
  return rows.find((r) => r.op === op && r.size === size)?.stats?.medianMs;
}

function podmanMedian(podman: PodmanResult[], op: string): number | undefined {
  return podman.find((p) => p.op === op)?.stats?.medianMs;
}

/** The targets met or missed, and comparisons that are no target. */
function evaluateTargets(rows: Row[], sizes: number[], podman: PodmanResult[] | undefined): { targets: Target[]; comparisons: string[] } {
  const targets: Target[] = [];
  const comparisons: string[] = [];
  const smallest = sizes[0] as number;
  const largest = sizes[sizes.length - 1] as number;

  if (sizes.length < 2) targets.push({ name: 'flat cost ≤ 2× across store sizes', pass: undefined, detail: 'needs two sizes' });
  for (const op of sizes.length < 2 ? [] : PER_CONTAINER_OPS) {
    const small = median(rows, op, smallest);
    const large = median(rows, op, largest);
    const name = `flat cost, ${largest} vs ${smallest} containers ≤ 2×: ${op}`;
    if (small === undefined || large === undefined) {
      targets.push({ name, pass: undefined, detail: 'not measured' });
      continue;
    }
    const ratio = large / small;
    targets.push({ name, pass: ratio <= 2, detail: `${fmt(large)} ms vs ${fmt(small)} ms = ${fmt(ratio, 2)}×` });
  }

  const csr = median(rows, OPS.createShareRemove, largest);
  targets.push({
    name: `fake create+share+remove < 5 ms median at ${largest} containers`,
    pass: csr === undefined ? undefined : csr < 5,
    detail: csr === undefined ? 'not measured' : `${fmt(csr)} ms`,
  });

  const rest = podman && podmanMedian(podman, PODMAN.volumeRest);
  const create1 = median(rows, OPS.create1, largest);
  const addVolume = median(rows, OPS.addVolume, largest);
  // Not a target: a durable create is bound by the fsyncs its atomic writes need.
  comparisons.push(
    `volume create next to Podman's warm REST API (create with 1 volume, ${largest} containers): ` +
      (rest === undefined || create1 === undefined
        ? podman
          ? 'not measured'
          : 'no Podman in this run'
        : `Podman ${fmt(rest)} ms, ours ${fmt(create1)} ms = ${fmt(rest / create1, 2)}×` +
          (addVolume === undefined ? '' : ` (createVolumes on an existing container: ${fmt(addVolume)} ms)`)),
  );

  for (const size of sizes) {
    const kernel = median(rows, OPS.mountKernel, size);
    const fakeMount = median(rows, OPS.mountFake, size);
    const baseline = median(rows, OPS.baseline, size);
    const vsFake = `kernel engine 10-volume mount+unmount ≤ 1.5× the fake's (${size} containers)`;
    const vsSpawn = `kernel engine 10-volume mount+unmount ≤ 0.5× one mount --bind + umount (${size} containers)`;
    if (kernel === undefined || fakeMount === undefined) targets.push({ name: vsFake, pass: undefined, detail: 'not measured' });
    else targets.push({ name: vsFake, pass: kernel / fakeMount <= 1.5, detail: `${fmt(kernel)} ms vs ${fmt(fakeMount)} ms = ${fmt(kernel / fakeMount, 2)}×` });
    if (kernel === undefined || baseline === undefined) targets.push({ name: vsSpawn, pass: undefined, detail: 'not measured' });
    else targets.push({ name: vsSpawn, pass: kernel / baseline <= 0.5, detail: `${fmt(kernel)} ms vs ${fmt(baseline)} ms = ${fmt(kernel / baseline, 2)}×` });
  }
  for (const op of [OPS.recoverKernel, OPS.recoverReal]) {
    const recover = median(rows, op, largest);
    targets.push({
      name: `${op} ≤ 1 s median at ${largest} containers`,
      pass: recover === undefined ? undefined : recover <= 1000,
      detail: recover === undefined ? 'not measured' : `${fmt(recover)} ms`,
    });
  }
  for (const size of sizes) {
    const real = median(rows, OPS.mountReal, size);
    const name = `util-linux engine 10-volume mount+unmount ≤ 3× one mount --bind + umount (${size} containers)`;
    const baseline = median(rows, OPS.baseline, size);
    if (real === undefined || baseline === undefined) {
      targets.push({ name, pass: undefined, detail: 'not measured (needs root and unshare)' });
      continue;
    }
    const ratio = real / baseline;
    targets.push({ name, pass: ratio <= 3, detail: `${fmt(real)} ms vs ${fmt(baseline)} ms = ${fmt(ratio, 2)}×` });
  }
  return { targets, comparisons };
}

// ---------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const startedAt = performance.now();
  const realUnavailable = realMountsUnavailable();
  const limits: Limits = {
    iterations: options.iterations,
    budgetMs: options.budgetMs,
    minIterations: Math.min(options.minIterations, options.iterations),
    warmup: options.warmup,
  };

  workDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'container-volumes-bench-'));
  const dir = workDir;
  cleanups.push(async () => {
    await unmountEverythingUnder(dir);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const machine = { node: process.version, cpu, cpus: os.cpus().length, kernel: os.release(), root: isRoot };
  console.log(`container-volumes bench — Node ${machine.node}, ${machine.cpus}× ${cpu}, Linux ${machine.kernel}`);
  console.log(
    `sizes ${options.sizes.join(', ')}; up to ${limits.iterations} iterations (${limits.warmup} warm-up) or ${limits.budgetMs / 1000} s per operation and size; ` +
      `real mounts: ${realUnavailable === undefined ? 'yes, in a private mount namespace' : `no (${realUnavailable})`}`,
  );

  const root = path.join(dir, 'store');
  const rootfsDir = path.join(dir, 'rootfs');
  await fsp.mkdir(rootfsDir);
  const fakeMounter = new FakeMounter();
  const fake = new ContainerRuntime({ root, mounter: fakeMounter });
  // Same store, real mounts: operations on it see the same number of containers.
  const real = realUnavailable === undefined ? new ContainerRuntime({ root, mounter: new BindMounter({ engine: 'util-linux' }) }) : undefined;
  const kernelMounter = realUnavailable === undefined ? new BindMounter() : undefined;
  const kernel = kernelMounter?.engine === 'kernel' ? new ContainerRuntime({ root, mounter: kernelMounter }) : undefined;

  const scratchRootfs = path.join(rootfsDir, 'scratch');
  await fsp.mkdir(scratchRootfs);
  const fixtureRootfs = async (name: string) => {
    const rootfs = path.join(rootfsDir, name);
    await fsp.mkdir(rootfs);
    return rootfs;
  };
  const lib: LibraryContext = {
    fake,
    fakeMounter,
    real,
    kernel,
    scratchRootfs,
    baselineDir: path.join(dir, 'baseline'),
    source10: await fake.create({ rootfs: await fixtureRootfs('source10'), volumes: TEN_PATHS }),
    fakeMount10: await fake.create({ rootfs: await fixtureRootfs('fake-mount10'), volumes: TEN_PATHS }),
    realMount10: real ? await real.create({ rootfs: await fixtureRootfs('real-mount10'), volumes: TEN_PATHS }) : undefined,
    kernelMount10: kernel ? await kernel.create({ rootfs: await fixtureRootfs('kernel-mount10'), volumes: TEN_PATHS }) : undefined,
  };
  const fixtureCount = 2 + (real ? 1 : 0) + (kernel ? 1 : 0);


  const rows: Row[] = [];
  const prepopulation: { size: number; ms: number; containers: number; volumes: number }[] = [];
  const fixtures: Fixtures = { sources: [], prepopulated: 0, volumes: 0 };
  for (const size of options.sizes) {
    const grownFrom = fixtures.prepopulated;
    const ms = await prepopulate(fake, rootfsDir, fixtures, size);
    prepopulation.push({ size, ms, containers: size - grownFrom, volumes: fixtures.volumes });
    progress(`store of ${size} containers (+${fixtureCount} fixtures): grown by ${size - grownFrom} through create() in ${fmt(ms / 1000, 1)} s`);
    rows.push(...(await benchLibrary(lib, size, limits, realUnavailable, options.ops)));
  }

  let podman: PodmanResult[] | undefined;
  let podmanNote: string | undefined;
  let podmanVersion: string | undefined;
  if (!options.podman) {
    podmanNote = 'disabled (--no-podman)';
  } else if (spawnSync('podman', ['--version']).status !== 0) {
    podmanNote = 'not installed';
  } else {
    progress('podman (own store under the temp dir):');
    try {
      const podmanDir = path.join(dir, 'podman');
      await fsp.mkdir(podmanDir);
      const result = await benchPodman(podmanDir, options.podmanIterations, limits);
      podman = result.results;
      podmanVersion = result.version;
    } catch (error) {
      if (interrupted) throw error;
      podmanNote = `failed: ${describeError(error)}`;
      progress(`  podman ${podmanNote}`);
    }
  }

  const { targets, comparisons } = evaluateTargets(rows, options.sizes, podman);
  const peakRssMB = process.resourceUsage().maxRSS / 1024;
  const totalSeconds = (performance.now() - startedAt) / 1000;

  // The table: one line per operation and store size.
  const smallest = options.sizes[0] as number;
  const header = ['operation', 'containers', 'n', 'median ms', 'p95 ms', 'ops/s', `vs ${smallest}`, 'podman ms', 'podman/ours'];
  const lines: string[][] = [];
  const ops = [...new Set(rows.map((r) => r.op))];
  for (const op of ops) {
    for (const row of rows.filter((r) => r.op === op)) {
      const s = row.stats;
      if (!s) {
        lines.push([op, String(row.size), '', row.note ?? '', '', '', '', '', '']);
        continue;
      }
      const base = median(rows, op, smallest);
      const equivalent = PODMAN_EQUIVALENT[op];
      const theirs = podman && equivalent ? podmanMedian(podman, equivalent) : undefined;
      lines.push([
        op,
        String(row.size),
        String(s.n),
        fmt(s.medianMs),
        fmt(s.p95Ms),
        fmt(s.opsPerSec, 0),
        base === undefined ? '' : `${fmt(s.medianMs / base, 2)}×`,
        fmt(theirs),
        theirs === undefined ? '' : `${fmt(theirs / s.medianMs, 1)}×`,
      ]);
    }
  }
  console.log(`\nmedians and p95 per operation; "vs ${smallest}" is the median over the median at ${smallest} containers; podman/ours > 1 means ours is faster`);
  console.log(table(header, lines, [false, true, true, true, true, true, true, true, true]));


  if (podman) {
    console.log(`\n${podmanVersion ?? 'podman'} (runc, own store; compared with ours at ${options.sizes[options.sizes.length - 1]} containers):`);
    const largest = options.sizes[options.sizes.length - 1] as number;
    const podmanLines = podman.map((p) => {
      const ours = Object.entries(PODMAN_EQUIVALENT).find(([, theirs]) => theirs === p.op)?.[0];
      const oursMedian = ours === undefined ? undefined : median(rows, ours, largest);
      return p.stats
        ? [p.op, String(p.stats.n), fmt(p.stats.medianMs), fmt(p.stats.p95Ms), fmt(p.stats.opsPerSec, 0), ours ?? '', oursMedian === undefined ? '' : `${fmt(p.stats.medianMs / oursMedian, 1)}×`]
        : [p.op, '', p.note ?? '', '', '', '', ''];
    });
    console.log(table(['podman operation', 'n', 'median ms', 'p95 ms', 'ops/s', 'ours', 'podman/ours'], podmanLines, [false, true, true, true, true, false, true]));
  } else {
    console.log(`\npodman: ${podmanNote ?? 'n/a'}`);
  }

  console.log('\npre-population (through the public API, sequential create() calls):');
  for (const p of prepopulation) {
    console.log(`  to ${p.size} containers: ${p.containers} created in ${fmt(p.ms / 1000, 1)} s (${fmt(p.ms / Math.max(1, p.containers), 2)} ms each); ${p.volumes} volumes in the store`);
  }

  const nominal = options.sizes[0] === 10 && options.sizes[options.sizes.length - 1] === 10_000;
  console.log(`\ntargets${nominal ? '' : ': indicative only, the targets are stated for 10 vs 10 000 containers'}:`);
  for (const t of targets) console.log(`  ${t.pass === undefined ? 'SKIP' : t.pass ? 'PASS' : 'FAIL'}  ${t.name}: ${t.detail}`);
  for (const c of comparisons) console.log(`  (compared) ${c}`);
  console.log(`\npeak RSS ${fmt(peakRssMB, 0)} MB; total ${fmt(totalSeconds, 1)} s`);

  const json = {
    machine,
    options: { sizes: options.sizes, iterations: limits.iterations, budgetMs: limits.budgetMs, warmup: limits.warmup, podmanIterations: options.podmanIterations, quick: options.quick },
    realMounts: realUnavailable === undefined ? true : realUnavailable,
    prepopulation,
    results: rows,
    podman: podman ? { version: podmanVersion, results: podman } : podmanNote,
    targets,
    peakRssMB,
    totalSeconds,
  };
  if (options.json) {
    await fsp.writeFile(options.json, `${JSON.stringify(json, null, 2)}\n`);
    console.log(`JSON written to ${options.json}`);
  } else {
    console.log(`\n${JSON.stringify(json, null, 2)}`);
  }
  return rows.some((r) => r.note?.startsWith('ERROR')) ? 1 : 0;
}

reexecInPrivateNamespace();

const signalExit = (signal: NodeJS.Signals) => (signal === 'SIGINT' ? 130 : 143);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  // `on`, not `once`: execa's signal-exit re-raises a signal that no other listener
  // handles, which would kill the process in the middle of its cleanup.
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = signal;
    progress(`\n${signal}: stopping after the current operation, then cleaning up ${workDir ?? ''}`);
    // Should an operation hang, clean up anyway rather than leave the temp dir behind.
    setTimeout(() => void cleanup().finally(() => process.exit(signalExit(signal))), 30_000).unref();
  });
}

let exitCode = 1;
try {
  exitCode = await main();
} catch (error) {
  if (!interrupted) console.error(error instanceof Error ? (error.stack ?? error.message) : error);
} finally {
  await cleanup();
}
process.exit(interrupted ? signalExit(interrupted) : exitCode);

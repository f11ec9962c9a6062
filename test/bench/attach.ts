// Attach of a 10-volume container to a running runc container, next to what a Podman
// user has instead (Podman cannot add a volume to a running container): a restart, i.e.
// a `podman run` of the same container with the same 10 volumes. Part of `npm run bench`;
// alone, after `npx tsup`:
//
//   npx tsx test/bench/attach.ts [--iterations N] [--no-podman]
//
// Needs root, runc and a static busybox at /bin/busybox; otherwise it says so and exits 0.
// It runs itself in a private mount namespace and imports the built package (dist/).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { BindMounter, ContainerRuntime } from '../../dist/index.js';

const { values } = parseArgs({ options: { iterations: { type: 'string' }, 'no-podman': { type: 'boolean', default: false } }, strict: false });
const iterations = Number(values.iterations ?? 20);
const NS_ENV = 'CONTAINER_VOLUMES_BENCH_ATTACH_PRIVATE';

function skip(why: string): never {
  console.log(`\nattach bench skipped: ${why}`);
  process.exit(0);
}

if (process.getuid?.() !== 0) skip('it needs root (mounts, runc)');
for (const tool of ['runc', 'nsenter']) if (spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool]).status !== 0) skip(`${tool} is not installed`);
if (process.env[NS_ENV] === undefined) {
  // In a private mount namespace: the runc container's mounts vanish with it.
  const child = spawnSync('unshare', ['-m', '--propagation', 'private', '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, [NS_ENV]: '1' },
  });
  process.exit(child.status ?? 1);
}
console.log('\nattach to a running container (the kernel engine) against the restart a Podman user has instead');
const TEN_PATHS = Array.from({ length: 10 }, (_, i) => `/data/v${i}`);

/** Nearest rank, as bench.ts reports them. */
function stats(samples: number[]) {
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] as number;
  const mid = sorted.length / 2;
  const median = sorted.length % 2 ? (sorted[Math.floor(mid)] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  return `median ${median.toFixed(1)} ms  p95 ${rank(0.95).toFixed(1)} ms  (n=${sorted.length})`;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cv-attach-bench-'));
const rootfs = path.join(dir, 'rootfs');
const runcRoot = path.join(dir, 'runc');
await fs.mkdir(path.join(rootfs, 'bin'), { recursive: true });
await fs.copyFile('/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
for (const applet of ['sh', 'sleep', 'true']) await fs.symlink('busybox', path.join(rootfs, 'bin', applet));
const runtime = new ContainerRuntime({ root: path.join(dir, 'state'), mounter: new BindMounter({ engine: 'kernel' }) });
const container = await runtime.create({ rootfs, volumes: TEN_PATHS });
const bundle = path.join(dir, 'bundle');
await fs.mkdir(bundle);
await execa('runc', ['spec', '--bundle', bundle]);
const spec = JSON.parse(await fs.readFile(path.join(bundle, 'config.json'), 'utf8'));
spec.process.terminal = false;
spec.process.args = ['sleep', '3600'];
spec.root = { path: rootfs, readonly: false };
await fs.writeFile(path.join(bundle, 'config.json'), JSON.stringify(spec));
await execa('runc', ['--root', runcRoot, 'run', '-d', '--bundle', bundle, 'bench'], { stdio: 'ignore' });
try {
  const { pid } = JSON.parse((await execa('runc', ['--root', runcRoot, 'state', 'bench'])).stdout) as { pid: number };
  const attach: number[] = [];
  const detach: number[] = [];
  for (let i = 0; i < iterations + 2; i++) {
    let attached: string[] = [];
    const a = await timed(async () => void ({ attached } = await runtime.attach(container.id, { pid })));
    if (attached.length !== 10) throw new Error(`attach made ${attached.length} mounts, not 10`);
    const d = await timed(() => runtime.detach(container.id, { pid }));
    // Two warm-up rounds (JIT, page cache), as bench.ts warms up.
    if (i >= 2) attach.push(a), detach.push(d);
  }
  console.log(`attach, 10 volumes, to a running runc container   ${stats(attach)}`);
  console.log(`detach, 10 volumes                                 ${stats(detach)}`);
} finally {
  await execa('runc', ['--root', runcRoot, 'delete', '--force', 'bench'], { reject: false });
}

if (!values['no-podman']) {
  const global = ['--root', path.join(dir, 'podman'), '--runroot', path.join(dir, 'podman-run'), '--tmpdir', path.join(dir, 'podman-tmp'), '--runtime', 'runc'];
  const volumeArgs = container.volumes.flatMap((v) => ['-v', `${path.join(dir, 'state', 'volumes', v.volumeId)}:${v.path}`]);
  const argv = [...global, 'run', '--rm', '--network', 'none', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', ...volumeArgs, '--rootfs', rootfs, 'true'];
  const runs: number[] = [];
  const podmanIterations = Math.min(iterations, 8);
  for (let i = 0; i < podmanIterations + 1; i++) {
    const t = await timed(() => execa('podman', argv, { stdin: 'ignore' }));
    if (i >= 1) runs.push(t);
  }
  console.log(`podman run --rm -v ×10 --rootfs (a restart)        ${stats(runs)}`);
}
await runtime.remove(container.id, { volumes: true });
await fs.rm(dir, { recursive: true, force: true });

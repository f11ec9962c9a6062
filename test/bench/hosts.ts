// The end of `npm run bench`: moving volumes between two hosts, against the tools an
// operator would use by hand, on the same data and link. The hosts are network
// namespaces joined by a veth pair, with sshd in host B's (examples/two-hosts.ts).
//
//   backup stream over ssh into restore on B   vs   tar -cf - | ssh B tar -xf -
//   first sync                                 vs   rsync -a over the same ssh
//   second sync after 1 MiB changed in a file  vs   rsync -a doing the same
//
// and, for what the library itself adds, against rsync with sync's own options
// (-aHAXS --numeric-ids: hard links, ACLs, extended attributes and holes, which plain
// rsync -a does not keep and which cost it time per file).
//
// The volume set: CONTAINER_VOLUMES_BENCH_HOSTS_MB (default 1024; 64 with --quick), 70%
// in four large files, 30% in small files of 4–60 KiB. Each measurement is the best of
// --runs (default 2; 1 with --quick). Needs root, iproute2, rsync, openssh-client and
// openssh-server; otherwise it says so and exits 0. It imports the built package (dist/).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BindMounter, ContainerRuntime } from '../../dist/index.js';
import { twoHosts, type TwoHosts } from '../../examples/two-hosts.js';

const { values } = parseArgs({ options: { quick: { type: 'boolean' }, runs: { type: 'string' } }, strict: false });
const quick = values.quick === true;
const megabytes = Number(process.env.CONTAINER_VOLUMES_BENCH_HOSTS_MB ?? (quick ? 64 : 1024));
const runs = Number(values.runs ?? (quick ? 1 : 2));
const MiB = 1024 * 1024;
const here = path.dirname(fileURLToPath(import.meta.url));
const WORKER = path.join(here, '..', 'helpers', 'host-a-worker.mjs');
const TSX = path.join(here, '..', '..', 'node_modules', 'tsx', 'dist', 'cli.mjs');
const RECEIVE = path.join(here, '..', '..', 'examples', 'receive.ts');
const NS_ENV = 'CONTAINER_VOLUMES_BENCH_HOSTS_PRIVATE';

function skip(why: string): never {
  console.log(`\nhosts bench skipped: ${why}`);
  process.exit(0);
}

if (process.getuid?.() !== 0) skip('it needs root (network namespaces, sshd, mounts)');
for (const tool of ['ip', 'rsync', 'ssh', 'ssh-keygen', 'tar']) if (spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool]).status !== 0) skip(`${tool} is not installed`);
if (spawnSync('test', ['-x', '/usr/sbin/sshd']).status !== 0) skip('/usr/sbin/sshd is missing (openssh-server)');
if (process.env[NS_ENV] === undefined) {
  // In a private mount namespace: the handlers' and the lab's mounts vanish with it.
  const child = spawnSync('unshare', ['-m', '--propagation', 'private', '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, [NS_ENV]: '1' },
  });
  process.exit(child.status ?? 1);
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const progress = (line: string) => process.stderr.write(`${line}\n`);
const work = await fs.mkdtemp(path.join(os.tmpdir(), 'cv-bench-hosts-'));
let lab: TwoHosts | undefined;
let exitCode = 0;
try {
  lab = await twoHosts(work, (b) => [process.execPath, TSX, RECEIVE, '--root', b.root, '--rootfs-parent', b.rootfs, '--incoming', b.incoming]);
  const target = `root@${lab.b.address}`;
  const rootA = path.join(work, 'A', 'state');
  const a = new ContainerRuntime({ root: rootA, mounter: new BindMounter() });
  const b = new ContainerRuntime({ root: lab.b.root, mounter: new BindMounter() });
  await fs.mkdir(path.join(work, 'A', 'rootfs'), { recursive: true });
  const db = await a.create({ rootfs: path.join(work, 'A', 'rootfs'), volumes: ['/data/large', '/data/small'] });
  const dirOf = (p: string) => path.join(rootA, 'volumes', db.volumes.find((v) => v.path === p)!.volumeId);

  progress(`hosts bench: writing ${megabytes} MiB of random data into two volumes…`);
  const large = Math.floor((megabytes * MiB * 0.7) / 4);
  for (let i = 0; i < 4; i++) {
    const file = await fs.open(path.join(dirOf('/data/large'), `big${i}.bin`), 'w');
    for (let done = 0; done < large; done += 4 * MiB) await file.write(randomBytes(Math.min(4 * MiB, large - done)));
    await file.close();
  }
  let files = 0;
  for (let done = 0; done < megabytes * MiB * 0.3; files++) {
    const size = 4096 + Math.floor(Math.random() * 56) * 1024;
    const dir = path.join(dirOf('/data/small'), `d${Math.floor(files / 100)}`);
    if (files % 100 === 0) await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, `f${files}`), randomBytes(size));
    done += size;
  }
  spawnSync('sync');

  const onA = async (argv: string[]) => {
    const started = performance.now();
    const run = await lab!.onA(argv, { stdin: 'ignore' });
    return { ms: performance.now() - started, stdout: String(run.stdout) };
  };
  const worker = async (args: string[]) => {
    const run = await lab!.onA([process.execPath, WORKER, ...args], { stdin: 'ignore' });
    const result = JSON.parse(String(run.stdout).trim().split('\n').at(-1)!) as Record<string, any>;
    if (result.code || result.backup?.code) throw new Error(`host A: ${JSON.stringify(result)}`);
    return result;
  };
  const best = async (what: string, once: () => Promise<{ ms: number; sent?: number }>) => {
    let top: { ms: number; sent?: number } | undefined;
    for (let i = 0; i < runs; i++) {
      const r = await once();
      progress(`  ${what.padEnd(34)} ${(r.ms / 1000).toFixed(2)} s${r.sent === undefined ? '' : `, ${(r.sent / MiB).toFixed(2)} MiB sent`}`);
      if (!top || r.ms < top.ms) top = r;
    }
    return top!;
  };
  const sentBy = (rsyncStats: string) => Number(/^Total bytes sent: ([\d,]+)/m.exec(rsyncStats)?.[1]?.replaceAll(',', '') ?? NaN);
  const freshDir = async (name: string) => {
    const dir = path.join(work, 'B', name);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { recursive: true });
    return dir;
  };
  const rsh = ['ssh', ...lab.ssh].join(' ');
  const sources = [`${dirOf('/data/large')}`, `${dirOf('/data/small')}`];

  // 1. A stream over ssh.
  const tarPipe = await best('tar -cf - | ssh B tar -xf -', async () => {
    const dest = await freshDir('tar');
    const started = performance.now();
    const tar = lab!.onA(['tar', '-cf', '-', '-C', path.dirname(sources[0]!), ...sources.map((s) => path.basename(s))], { stdin: 'ignore', buffer: false });
    const ssh = lab!.onA(['ssh', ...lab!.ssh, target, `tar -xf - -C ${dest}`], { stdout: 'ignore', buffer: false });
    tar.stdout!.pipe(ssh.stdin!);
    await Promise.all([tar, ssh]);
    return { ms: performance.now() - started };
  });
  const stream = await best('backup stream → restore on B', async () => {
    const result = await worker(['backup', rootA, db.id, JSON.stringify(lab!.receiveSsh), target]);
    await b.remove(result.received.container, { volumes: true });
    await fs.rm(result.received.rootfs, { recursive: true });
    return { ms: result.ms };
  });
  await fs.rm(path.join(work, 'B', 'tar'), { recursive: true, force: true });

  // 2. A first sync, then 3. a second one after 1 MiB changed in the middle of a large file.
  const plainDest = path.join(work, 'B', 'plain');
  const ourDest = path.join(lab.b.incoming, 'db');
  const fullDest = path.join(work, 'B', 'full');
  const plainRsync = async () => {
    const run = await onA(['rsync', '-a', '--stats', '-e', rsh, '--', ...sources, `${target}:${plainDest}/`]);
    return { ms: run.ms, sent: sentBy(run.stdout) };
  };
  const fullRsync = async () => {
    const run = await onA(['rsync', '-aHAXS', '--numeric-ids', '--stats', '-e', rsh, '--', ...sources, `${target}:${fullDest}/`]);
    return { ms: run.ms, sent: sentBy(run.stdout) };
  };
  const ourSync = async () => {
    const result = await worker(['sync', rootA, db.id, `${target}:${ourDest}`, JSON.stringify(lab!.ssh)]);
    return { ms: result.ms as number, sent: result.bytesSent as number };
  };
  const firstPlain = await best('rsync -a (first)', async () => {
    await freshDir('plain');
    return plainRsync();
  });
  const firstFull = await best('rsync -aHAXS --numeric-ids (first)', async () => {
    await freshDir('full');
    return fullRsync();
  });
  const firstOurs = await best('sync (first)', async () => {
    await fs.rm(ourDest, { recursive: true, force: true });
    return ourSync();
  });
  const change = async () => {
    const file = await fs.open(path.join(dirOf('/data/large'), 'big1.bin'), 'r+');
    await file.write(randomBytes(MiB), 0, MiB, Math.floor(large / 2));
    await file.close();
  };
  // Each run changes the file again, then lets both tools catch up with the same change.
  const second: Record<'plain' | 'full' | 'ours', { ms: number; sent?: number }[]> = { plain: [], full: [], ours: [] };
  for (let i = 0; i < runs; i++) {
    await change();
    second.plain.push(await plainRsync());
    second.full.push(await fullRsync());
    second.ours.push(await ourSync());
    progress(`  second sync, run ${i + 1}: rsync -a ${(second.plain.at(-1)!.ms / 1000).toFixed(2)} s ${(second.plain.at(-1)!.sent! / MiB).toFixed(2)} MiB; rsync -aHAXS ${(second.full.at(-1)!.ms / 1000).toFixed(2)} s; sync ${(second.ours.at(-1)!.ms / 1000).toFixed(2)} s ${(second.ours.at(-1)!.sent! / MiB).toFixed(2)} MiB`);
  }
  const fastest = (list: { ms: number; sent?: number }[]) => list.reduce((x, y) => (y.ms < x.ms ? y : x));
  const [secondPlain, secondFull, secondOurs] = [fastest(second.plain), fastest(second.full), fastest(second.ours)];

  const s = (ms: number) => (ms / 1000).toFixed(2);
  const rate = (ms: number) => (megabytes / (ms / 1000)).toFixed(1);
  const mib = (bytes: number | undefined) => (bytes === undefined ? '' : (bytes / MiB).toFixed(2));
  console.log(`\nvolumes between two hosts (network namespaces, veth, OpenSSH): ${megabytes} MiB, 4 large files and ${files} small ones; best of ${runs}`);
  console.log(
    table(
      ['operation', 'ours s', 'MiB/s', 'sent MiB', 'baseline', 'base s', 'MiB/s', 'sent MiB', 'base/ours'],
      [
        ['backup stream over ssh → restore on B', s(stream.ms), rate(stream.ms), '', 'tar | ssh | tar', s(tarPipe.ms), rate(tarPipe.ms), '', (tarPipe.ms / stream.ms).toFixed(2)],
        ['first sync', s(firstOurs.ms), rate(firstOurs.ms), mib(firstOurs.sent), 'rsync -a', s(firstPlain.ms), rate(firstPlain.ms), mib(firstPlain.sent), (firstPlain.ms / firstOurs.ms).toFixed(2)],
        ['second sync (1 MiB changed)', s(secondOurs.ms), '', mib(secondOurs.sent), 'rsync -a', s(secondPlain.ms), '', mib(secondPlain.sent), (secondPlain.ms / secondOurs.ms).toFixed(2)],
        ['first sync', s(firstOurs.ms), rate(firstOurs.ms), mib(firstOurs.sent), 'rsync -aHAXS', s(firstFull.ms), rate(firstFull.ms), mib(firstFull.sent), (firstFull.ms / firstOurs.ms).toFixed(2)],
        ['second sync (1 MiB changed)', s(secondOurs.ms), '', mib(secondOurs.sent), 'rsync -aHAXS', s(secondFull.ms), '', mib(secondFull.sent), (secondFull.ms / secondOurs.ms).toFixed(2)],
      ],
    ),
  );
  const targets = [
    { name: 'backup stream ≥ 0.9× the throughput of tar | ssh | tar', pass: tarPipe.ms / stream.ms >= 0.9, detail: `${(tarPipe.ms / stream.ms).toFixed(2)}×` },
    { name: 'first sync ≥ 0.9× plain rsync -a', pass: firstPlain.ms / firstOurs.ms >= 0.9, detail: `${(firstPlain.ms / firstOurs.ms).toFixed(2)}×` },
    { name: 'second sync sends ≤ 2 MiB', pass: secondOurs.sent! <= 2 * MiB, detail: `${mib(secondOurs.sent)} MiB (rsync -a: ${mib(secondPlain.sent)} MiB)` },
    { name: 'second sync within 1.2× the time of plain rsync', pass: secondOurs.ms <= 1.2 * secondPlain.ms, detail: `${(secondOurs.ms / secondPlain.ms).toFixed(2)}×` },
  ];
  console.log(`\ntargets${megabytes === 1024 ? '' : ': indicative only, the targets are stated for a 1 GiB volume set'}:`);
  for (const t of targets) console.log(`  ${t.pass ? 'PASS' : 'FAIL'}  ${t.name}: ${t.detail}`);
  console.log(`  (compared) sync against rsync -aHAXS --numeric-ids, the same options: first ${(firstFull.ms / firstOurs.ms).toFixed(2)}×, second ${(secondFull.ms / secondOurs.ms).toFixed(2)}×`);
} catch (error) {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  exitCode = 1;
} finally {
  await lab?.close();
  await fs.rm(work, { recursive: true, force: true });
}
process.exit(exitCode);

// The data-volumes story with LXC doing every mount:
//   DB=$(docker run -d -v /var/lib/postgres -v /var/log postgres)   → a "db" container run by lxc-execute
//   docker run --volumes-from $DB:ro -v /backup backuper            → a backup job, run by lxc-execute, archiving db's volumes
// The library keeps the volumes and says where they go (`runtime.lxcMountEntries`);
// LXC mounts them in each container's own mount namespace. `runtime.mount` is never
// called. On a throw-away state directory, then everything is removed again.
//
// Run: npx tsx examples/lxc.ts   (as root, with LXC and a static busybox:
// apt-get install --no-install-recommends lxc busybox-static)
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { ContainerRuntime } from 'container-volumes';
import { pickMounter } from './pick-mounter.js';

// Only for the re-run in a private mount namespace and for reading the store: LXC mounts.
const { mounter, real } = await pickMounter();
const temporary: string[] = [];
const tempDir = async (name: string) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `lxc-${name}-`));
  temporary.push(dir);
  return dir;
};

const state = await tempDir('state');
const runtime = new ContainerRuntime({ root: state, mounter });
const lxcPath = await tempDir('lxc-path');
let stateMounted = false;

/** A root filesystem with Debian's static busybox and its applets (sh, cat, tar…). */
async function busyboxImage(name: string): Promise<string> {
  const rootfs = await tempDir(`${name}-rootfs`);
  await fs.mkdir(path.join(rootfs, 'bin'));
  await fs.copyFile('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  await fs.chmod(path.join(rootfs, 'bin/busybox'), 0o755);
  const { stdout } = await execa('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await fs.symlink('busybox', path.join(rootfs, 'bin', applet));
  }
  return rootfs;
}

/** Runs `sh -c script` in a new LXC container on `rootfs` with the container's volume entries. */
async function lxcExecute(name: string, rootfs: string, entries: string[], script: string) {
  const config = path.join(lxcPath, `${name}.conf`);
  const lines = [
    `lxc.uts.name = ${name}`,
    `lxc.rootfs.path = dir:${rootfs}`,
    'lxc.mount.auto = proc:mixed sys:ro',
    'lxc.net.0.type = empty',
    'lxc.apparmor.profile = unconfined',
    ...entries,
  ];
  await fs.writeFile(config, `${lines.join('\n')}\n`);
  console.log(`${name}: lxc-execute with ${entries.length} volume entries:`);
  for (const line of entries) console.log(`  ${line}`);
  return execa('lxc-execute', ['-n', name, '-P', lxcPath, '-f', config, '--', '/bin/busybox', 'sh', '-c', script], {
    reject: false,
    stdin: 'ignore',
  });
}

try {
  if (!real) {
    // The entries need no privilege; running LXC does.
    const db = await runtime.create({ rootfs: await tempDir('db-rootfs'), volumes: ['/var/lib/postgres', '/var/log'] });
    console.log('not root: showing the LXC configuration lines only, lxc-execute is not run');
    for (const line of await runtime.lxcMountEntries(db.id)) console.log(`  ${line}`);
    await runtime.remove(db.id, { volumes: true });
  } else {
    const version = await execa('lxc-execute', ['--version'], { reject: false });
    if (version.exitCode !== 0) throw new Error('lxc-execute not found: apt-get install --no-install-recommends lxc');
    console.log(`LXC ${version.stdout.trim()}; the library's own mounter is never asked to mount`);

    // LXC applies nosuid,nodev to a read-write bind only when the mount it binds from
    // has them, so the state directory goes on a nosuid,nodev bind mount of itself.
    await execa('mount', ['--bind', state, state]);
    stateMounted = true;
    await execa('mount', ['-o', 'remount,bind,nosuid,nodev', state]);

    const dbRootfs = await busyboxImage('db');
    await fs.mkdir(path.join(dbRootfs, 'var/lib/postgres'), { recursive: true });
    await fs.writeFile(path.join(dbRootfs, 'var/lib/postgres/postgresql.conf'), "listen_addresses = '*'\n");
    const db = await runtime.create({ rootfs: dbRootfs, volumes: ['/var/lib/postgres', '/var/log'] });
    console.log(`db ${db.id}: ${db.volumes.map((v) => `${v.path} → volume ${v.volumeId}`).join(', ')}`);

    const dbRun = await lxcExecute(
      'db',
      db.rootfs,
      await runtime.lxcMountEntries(db.id),
      'echo 16 > /var/lib/postgres/PG_VERSION && echo "db started" >> /var/log/db.log && grep " /var/lib/postgres " /proc/self/mountinfo | cut -d" " -f6',
    );
    if (dbRun.exitCode !== 0) throw new Error(`the db container failed: ${dbRun.stderr}`);
    console.log(`db saw /var/lib/postgres mounted ${dbRun.stdout.trim()}`);
    const pgVolume = await runtime.volumes.inspect(db.volumes.find((v) => v.path === '/var/lib/postgres')!.volumeId);
    console.log(`db wrote /var/lib/postgres/PG_VERSION: ${(await fs.readFile(path.join(pgVolume.hostPath, 'PG_VERSION'), 'utf8')).trim()}`);

    // The backup job gets db's volumes read-only and a volume of its own for the archive.
    const job = await runtime.create({ rootfs: await busyboxImage('backup'), volumes: ['/backup'], volumesFrom: [`${db.id}:ro`] });
    console.log(`backup job ${job.id}: ${job.volumes.map((v) => `${v.path} (${v.mode})`).join(', ')}`);
    const jobRun = await lxcExecute(
      'backup',
      job.rootfs,
      await runtime.lxcMountEntries(job.id),
      'tar -cf /backup/db.tar -C / var/lib/postgres var/log && if echo x > /var/log/backup.log; then echo written; else echo refused; fi',
    );
    if (jobRun.exitCode !== 0) throw new Error(`the backup job failed: ${jobRun.stderr}`);
    const refusal = /Read-only file system/.test(jobRun.stderr) ? 'Read-only file system' : jobRun.stderr.trim();
    console.log(`backup job writing /var/log/backup.log: ${jobRun.stdout.trim()} (${refusal})`);
    if (jobRun.stdout.trim() !== 'refused') throw new Error('a write through a read-only volume was not refused');

    const backupVolume = await runtime.volumes.inspect(job.volumes.find((v) => v.path === '/backup')!.volumeId);
    const { stdout: members } = await execa('tar', ['-tf', path.join(backupVolume.hostPath, 'db.tar')]);
    const files = members.split('\n').filter((m) => !m.endsWith('/'));
    console.log(`backup job archived: ${files.sort().join(', ')}`);

    const mounted = await Promise.all([db, job].map(async (c) => (await runtime.get(c.id)).mounted));
    const { stdout: mountinfo } = await execa('cat', ['/proc/self/mountinfo']);
    const onHost = mountinfo.split('\n').filter((line) => [db.rootfs, job.rootfs].some((r) => line.includes(` ${r}/`))).length;
    console.log(`after both containers exited: mounted flags ${mounted.join(', ')}; ${onHost} mounts under their rootfs on the host`);

    await runtime.remove(job.id, { volumes: true });
    await runtime.remove(db.id, { volumes: true });
    const left = { containers: (await runtime.list()).length, volumes: (await runtime.volumes.list()).length };
    console.log(`after removal: ${left.containers} containers, ${left.volumes} volumes`);
    if (left.containers + left.volumes > 0) throw new Error('the store is not empty');
  }
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  if (stateMounted) await execa('umount', [state], { reject: false });
  for (const dir of temporary) await fs.rm(dir, { recursive: true, force: true });
  // LXC keeps a lock directory for each container path it was given, under /run/lxc/lock,
  // with a parent for each component of that path: ours go, and the parents left empty.
  const locks = '/run/lxc/lock';
  await fs.rm(path.join(locks, lxcPath), { recursive: true, force: true });
  for (let dir = path.dirname(path.join(locks, lxcPath)); dir !== locks; dir = path.dirname(dir)) {
    if (!(await fs.rmdir(dir).then(() => true, () => false))) break;
  }
}
console.log(process.exitCode ? 'lxc example FAILED' : 'lxc example done: temporary directories deleted');

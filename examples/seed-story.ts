// The story of Docker's 2013 data-volumes spec (§1–§2), end to end:
//   docker run -v /var/lib/postgres -v /var/log postgres        → a "db" container
//   docker run --volumes-from $DB backuper                      → a "backup job" sharing its volumes
//   docker run --volumes-from $DB:ro reader                     → a reader that cannot write
// on a throw-away state directory, then everything is removed again.
//
// Run: npm run example   (real bind mounts as root, the in-memory fake otherwise)
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ContainerRuntime, type ContainerInfo } from 'container-volumes';
import { pickMounter } from './pick-mounter.js';

const { mounter, real } = await pickMounter();
const temporary: string[] = [];
const tempDir = async (name: string) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `seed-story-${name}-`));
  temporary.push(dir);
  return dir;
};

const state = await tempDir('state');
const simulated = real ? '' : ' (simulated: through the volume directory)';
const runtime = new ContainerRuntime({ root: state, mounter });

/**
 * Where a process inside `container` would find `file`. With real mounts that is the
 * file under the container's rootfs. The fake mounts nothing, so we go where the
 * bind mount would have led: the directory of the volume that covers the path.
 */
async function seenBy(container: ContainerInfo, file: string): Promise<string> {
  if (real) return path.join(container.rootfs, file);
  const volume = container.volumes
    .filter((v) => file.startsWith(`${v.path}/`))
    .sort((a, b) => b.path.length - a.path.length)[0];
  if (!volume) throw new Error(`no volume of ${container.id} covers ${file}`);
  const { hostPath } = await runtime.volumes.inspect(volume.volumeId);
  return path.join(hostPath, path.relative(volume.path, file));
}

try {
  // The image already has a config at /var/lib/postgres: the new volume starts as a copy of it (copy-up).
  const dbRootfs = await tempDir('db-rootfs');
  await fs.mkdir(path.join(dbRootfs, 'var/lib/postgres'), { recursive: true });
  await fs.writeFile(path.join(dbRootfs, 'var/lib/postgres/postgresql.conf'), "listen_addresses = '*'\n");

  const db = await runtime.create({ rootfs: dbRootfs, volumes: ['/var/lib/postgres', '/var/log'] });
  console.log(`db ${db.id}: ${db.volumes.map((v) => `${v.path} → volume ${v.volumeId}`).join(', ')}`);
  const pgVolume = db.volumes.find((v) => v.path === '/var/lib/postgres')!;
  const copied = await fs.readdir((await runtime.volumes.inspect(pgVolume.volumeId)).hostPath);
  console.log(`copy-up: the /var/lib/postgres volume starts with ${copied.join(', ')}`);

  await runtime.mount(db.id);
  await fs.writeFile(await seenBy(db, '/var/lib/postgres/PG_VERSION'), '16\n');
  console.log(`db wrote /var/lib/postgres/PG_VERSION: 16${simulated}`);

  // The backup job names no volume: it gets all of db's, at the same paths.
  const job = await runtime.create({ rootfs: await tempDir('job-rootfs'), volumesFrom: [db.id] });
  await runtime.mount(job.id);
  const version = await fs.readFile(await seenBy(job, '/var/lib/postgres/PG_VERSION'), 'utf8');
  console.log(`backup job reads /var/lib/postgres/PG_VERSION: ${version.trim()}${simulated}`);

  // ':ro' shares the same volumes read-only: the kernel refuses writes.
  const reader = await runtime.create({ rootfs: await tempDir('reader-rootfs'), volumesFrom: [`${db.id}:ro`] });
  await runtime.mount(reader.id);
  console.log(`reader has ${reader.volumes.map((v) => `${v.path} (${v.mode})`).join(', ')}`);
  if (real) {
    const refused = await fs.writeFile(path.join(reader.rootfs, 'var/log/reader.log'), 'x').then(
      () => 'NOT refused',
      (error: NodeJS.ErrnoException) => `refused with ${error.code}`,
    );
    console.log(`reader writing /var/log/reader.log: ${refused}`);
    if (!refused.startsWith('refused with EROFS')) throw new Error('a write through a read-only volume was not refused');
  } else {
    console.log('reader writing /var/log/reader.log: skipped (the fake mounter enforces no mode)');
  }

  console.log('volumes:');
  for (const volume of await runtime.volumes.list()) {
    const users = volume.usedBy.map((u) => `${u.containerId.slice(0, 8)} at ${u.path} (${u.mode})`).join(', ');
    console.log(`  ${volume.id}: used by ${users}`);
  }

  for (const c of [reader, job, db]) await runtime.unmount(c.id);
  await runtime.remove(reader.id);
  await runtime.remove(job.id);
  // `docker rm -v`: db's volumes go too, now that nobody else references them.
  await runtime.remove(db.id, { volumes: true });
  const left = { containers: (await runtime.list()).length, volumes: (await runtime.volumes.list()).length };
  console.log(`after removal: ${left.containers} containers, ${left.volumes} volumes`);
  if (left.containers + left.volumes > 0) throw new Error('the store is not empty');
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  // After a failure something may still be mounted: detach it before deleting, or the
  // recursive delete would walk through the bind mounts.
  for (const c of await runtime.list().catch(() => [])) await runtime.unmount(c.id).catch(() => undefined);
  for (const dir of temporary) await fs.rm(dir, { recursive: true, force: true });
}
console.log(process.exitCode ? 'seed story FAILED' : 'seed story done: temporary directories deleted');

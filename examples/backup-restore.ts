// Custom volume handlers, end to end:
//   DB=$(docker run -d -v /var/lib/postgres -v /var/log postgres)   → a "db" container that writes its data
//   docker run --volumes-from $DB backuper backup-postgres           → runtime.backup(): a tar archive of its volumes
//   a fresh container restored from that archive                      → runtime.restore(), then a handler reads it
// on a throw-away state directory, then everything is removed again.
//
// Run: npx tsx examples/backup-restore.ts   (as root: backup and restore run GNU tar in
// a private mount namespace, which takes root)
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { ContainerRuntime, ContainerVolumesError, HandlerError, type HandlerVolume, type Progress } from 'container-volumes';
import { pickMounter } from './pick-mounter.js';

const { mounter, real } = await pickMounter();
const temporary: string[] = [];
const tempDir = async (name: string) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `backup-restore-${name}-`));
  temporary.push(dir);
  return dir;
};
const MiB = 1024 * 1024;
const mb = (bytes: number) => `${(bytes / MiB).toFixed(1)} MB`;

const runtime = new ContainerRuntime({ root: await tempDir('state'), mounter });

/**
 * A progress bar for `onProgress`: redrawn in place on a terminal, one line per quarter
 * otherwise (a log, CI). `done()` draws the final state once the call has returned.
 */
function progressBar(label: string) {
  let last: Progress = { bytesDone: 0, bytesTotal: 0 };
  let printedQuarter = -1;
  const render = ({ bytesDone, bytesTotal }: Progress) => {
    const fraction = bytesTotal === 0 ? 1 : bytesDone / bytesTotal;
    const bar = '#'.repeat(Math.round(fraction * 24)).padEnd(24, '.');
    return `${label.padEnd(8)}[${bar}] ${String(Math.floor(fraction * 100)).padStart(3)}%  ${mb(bytesDone)} / ${mb(bytesTotal)}`;
  };
  return {
    onProgress(progress: Progress) {
      last = progress;
      if (process.stdout.isTTY) {
        process.stdout.write(`\r${render(progress)}`);
      } else {
        // bytesTotal is an estimate until the end: a quarter may be reached twice.
        const quarter = Math.min(3, Math.floor((progress.bytesDone / Math.max(progress.bytesTotal, 1)) * 4));
        if (quarter > printedQuarter) {
          printedQuarter = quarter;
          console.log(render(progress));
        }
      }
    },
    done() {
      if (process.stdout.isTTY) process.stdout.write(`\r${render(last)}\n`);
      else console.log(render(last));
    },
  };
}

/**
 * What the restored copy must reproduce, for each file of each volume: type, mode,
 * owner, link target and a content hash, folded into one digest per volume.
 */
async function fingerprint(volumes: HandlerVolume[]): Promise<Record<string, { files: number; digest: string }>> {
  const out: Record<string, { files: number; digest: string }> = {};
  for (const volume of volumes) {
    const hash = createHash('sha256');
    let files = 0;
    const walk = async (dir: string, rel: string): Promise<void> => {
      for (const name of (await fs.readdir(dir)).sort()) {
        const full = path.join(dir, name);
        const stat = await fs.lstat(full);
        // A volume mounted inside this one: the handler sees its own directory for it.
        if (volumes.some((v) => v.path === path.posix.join(volume.path, rel, name))) continue;
        hash.update(`${rel}/${name} ${stat.mode.toString(8)} ${stat.uid}:${stat.gid} ${stat.size}\n`);
        if (stat.isSymbolicLink()) hash.update(`-> ${await fs.readlink(full)}\n`);
        else if (stat.isFile()) {
          files++;
          hash.update(await fs.readFile(full));
        } else if (stat.isDirectory()) await walk(full, `${rel}/${name}`);
      }
    };
    await walk(volume.hostPath, '');
    out[volume.path] = { files, digest: hash.digest('hex').slice(0, 16) };
  }
  return out;
}

try {
  const db = await runtime.create({ rootfs: await tempDir('db-rootfs'), volumes: ['/var/lib/postgres', '/var/log'] });
  console.log(`db ${db.id}: ${db.volumes.map((v) => `${v.path} → volume ${v.volumeId}`).join(', ')}`);

  // The database writes its data. A function handler stands in for postgres here: it
  // gets the host directory of each volume, and while it runs the volumes are in use.
  await runtime.runHandler(db.id, async ({ volumes }) => {
    const at = (containerPath: string, file: string) => path.join(volumes.find((v) => v.path === containerPath)!.hostPath, file);
    await fs.mkdir(at('/var/lib/postgres', 'base/1'), { recursive: true });
    await fs.writeFile(at('/var/lib/postgres', 'PG_VERSION'), '16\n');
    // A table file: 2 MB of data that does not compress away.
    const table = Buffer.alloc(2 * MiB);
    for (let i = 0; i < table.length; i += 32) createHash('sha256').update(String(i)).digest().copy(table, i);
    await fs.writeFile(at('/var/lib/postgres', 'base/1/16384'), table);
    // A preallocated WAL segment: 64 MB, almost all of it a hole.
    const wal = await fs.open(at('/var/lib/postgres', '000000010000000000000001'), 'w');
    await wal.truncate(64 * MiB);
    await wal.write('wal record\n', 0);
    await wal.close();
    await fs.symlink('000000010000000000000001', at('/var/lib/postgres', 'current-wal'));
    await fs.mkdir(at('/var/log', 'postgresql'));
    await fs.writeFile(at('/var/log', 'postgresql/postgresql-16-main.log'), 'LOG:  database system is ready to accept connections\n');
    if (real) {
      // As in the postgres image: the data belongs to uid 999 and is private to it.
      for (const file of ['PG_VERSION', 'base', 'base/1', 'base/1/16384', '000000010000000000000001']) {
        await fs.chown(at('/var/lib/postgres', file), 999, 999);
      }
      await fs.chmod(at('/var/lib/postgres', 'base/1/16384'), 0o600);
    }
    const refused = await runtime.volumes.remove(volumes[0]!.volumeId).then(
      () => 'NOT refused',
      (error: ContainerVolumesError) => `refused with ${error.code}`,
    );
    console.log(`removing volume ${volumes[0]!.volumeId} while a handler uses it: ${refused}`);
  });
  console.log('db wrote /var/lib/postgres/PG_VERSION (16), a 2 MB table, a sparse 64 MB WAL segment and a log');

  if (!real) {
    console.log('backup and restore run GNU tar in a private mount namespace, which takes root: skipped.');
  } else {
    // The backup job: shares db's volumes read-only and archives them.
    const archive = path.join(await tempDir('backups'), 'db.tar');
    const backupBar = progressBar('backup');
    const manifest = await runtime.backup(db.id, archive, { onProgress: backupBar.onProgress });
    backupBar.done();
    const { size } = await fs.stat(archive);
    const { stdout: members } = await execa('tar', ['--list', `--file=${archive}`]);
    const listed = members.split('\n');
    console.log(`archive db.tar: ${mb(size)} (the WAL's hole is not stored), ${listed.length} members, the first ${listed[0]}`);
    console.log(`manifest: container ${manifest.containerId}, volumes ${manifest.volumes.map((v) => `${v.path} (${v.mode}, ${v.volumeId})`).join(', ')}`);
    // Files that changed while tar read them (a live volume): the archive is then not a snapshot.
    if (manifest.warnings.length > 0) console.log(`tar warned: ${manifest.warnings.join('; ')}`);

    // A fresh container, restored from the archive.
    const restoreBar = progressBar('restore');
    const copy = await runtime.restore(archive, { rootfs: await tempDir('restored-rootfs'), onProgress: restoreBar.onProgress });
    restoreBar.done();
    console.log(`restored ${copy.id}: ${copy.volumes.map((v) => `${v.path} → new volume ${v.volumeId} (${v.mode})`).join(', ')}`);

    // A command handler reads the restored data at its container path, in a rootfs
    // holding a static busybox (docs/handlers.md): Debian's busybox-static.
    const handlerRootfs = await tempDir('handler-rootfs');
    await fs.mkdir(path.join(handlerRootfs, 'bin'));
    const reads = 'restored container reads /var/lib/postgres/PG_VERSION';
    const skipped = `${reads}: skipped (needs a static /bin/busybox: apt-get install busybox-static)`;
    if (!(await fs.copyFile('/bin/busybox', path.join(handlerRootfs, 'bin/busybox')).then(() => true, () => false))) {
      console.log(skipped);
    } else {
      try {
        const { stdout } = await runtime.runHandler(copy.id, {
          command: ['/bin/busybox', 'cat', '/var/lib/postgres/PG_VERSION'],
          rootfs: handlerRootfs,
          mode: 'ro',
        });
        console.log(`${reads}: ${stdout.trim()}`);
      } catch (error) {
        // 127: chroot found no program it could run, e.g. a busybox that needs a dynamic loader.
        if (!(error instanceof HandlerError && error.exitCode === 127)) throw error;
        console.log(skipped);
      }
    }

    // Every file, owner, mode and link of both, compared.
    const before = await runtime.runHandler(db.id, ({ volumes }) => fingerprint(volumes), { mode: 'ro' });
    const after = await runtime.runHandler(copy.id, ({ volumes }) => fingerprint(volumes), { mode: 'ro' });
    for (const [volumePath, { files, digest }] of Object.entries(before)) {
      const same = after[volumePath]?.digest === digest;
      console.log(`${volumePath}: files ${files}, fingerprint ${digest} in db, ${after[volumePath]?.digest ?? 'missing'} restored: ${same ? 'same' : 'DIFFERENT'}`);
      if (!same) throw new Error(`the restored ${volumePath} differs from the original`);
    }
    await runtime.remove(copy.id, { volumes: true });
  }

  await runtime.remove(db.id, { volumes: true });
  const left = { containers: (await runtime.list()).length, volumes: (await runtime.volumes.list()).length };
  console.log(`after removal: ${left.containers} containers, ${left.volumes} volumes`);
  if (left.containers + left.volumes > 0) throw new Error('the store is not empty');
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  // Nothing here mounts in this namespace (handlers mount in their own), but a failed
  // run is cleaned the same way as seed-story.ts, to be safe.
  for (const c of await runtime.list().catch(() => [])) await runtime.unmount(c.id).catch(() => undefined);
  for (const dir of temporary) await fs.rm(dir, { recursive: true, force: true });
}
console.log(process.exitCode ? 'backup-restore FAILED' : 'backup-restore done: temporary directories deleted');

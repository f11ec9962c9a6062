// Moving a container to another host while it runs, the recipe end to end:
//   sync, sync again (the database keeps writing), stop the writer, final sync,
//   restore on the other host
// between two "hosts" made of network namespaces on this machine (examples/two-hosts.ts):
// host A holds the container, host B runs Debian's sshd, and its receiving end
// (examples/receive.ts) is the forced command of the key A restores with. rsync goes
// over ssh with another key. Everything is removed at the end.
//
// Run: npx tsx examples/move-to-another-host.ts   (as root, with iproute2, rsync,
// openssh-client and openssh-server installed)
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BindMounter, ContainerRuntime, type SyncResult } from 'container-volumes';
import { pickMounter } from './pick-mounter.js';
import { twoHosts, type TwoHosts } from './two-hosts.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const tsx = [process.execPath, path.join(here, '..', 'node_modules', 'tsx', 'dist', 'cli.mjs')];

// Host A's part of each sync, run by this file inside A's network namespace.
if (process.argv[2] === '--sync-on-host-a') {
  const [root, containerId, destination, ssh] = process.argv.slice(3) as [string, string, string, string];
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  const result = await runtime.sync(containerId, destination, { ssh: JSON.parse(ssh) as string[] });
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

const { mounter, real } = await pickMounter();
if (!real) {
  console.log('moving a container between hosts takes root (network namespaces, sshd, mounts): skipped.');
  process.exit(0);
}
const MiB = 1024 * 1024;
const work = await fs.mkdtemp(path.join(os.tmpdir(), 'move-to-another-host-'));
let lab: TwoHosts | undefined;
let writer: NodeJS.Timeout | undefined;
const kb = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;

/** One digest per volume of every file's path, mode, owner and bytes, and every link's target. */
async function fingerprint(dir: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (current: string, rel: string): Promise<void> => {
    for (const name of (await fs.readdir(current)).sort()) {
      const full = path.join(current, name);
      const stat = await fs.lstat(full);
      hash.update(`${rel}/${name} ${stat.mode.toString(8)} ${stat.uid}:${stat.gid} ${stat.size}\n`);
      if (stat.isSymbolicLink()) hash.update(await fs.readlink(full));
      else if (stat.isFile()) hash.update(await fs.readFile(full));
      else if (stat.isDirectory()) await walk(full, `${rel}/${name}`);
    }
  };
  await walk(dir, '');
  return hash.digest('hex').slice(0, 16);
}

try {
  lab = await twoHosts(work, (b) => [...tsx, path.join(here, 'receive.ts'), '--root', b.root, '--rootfs-parent', b.rootfs, '--incoming', b.incoming]);
  console.log(`host B: sshd on ${lab.b.address}:2222 in its own network namespace, state root ${path.relative(work, lab.b.root)}`);

  // Host A: a database container whose data keeps changing.
  const rootA = path.join(work, 'A', 'state');
  const a = new ContainerRuntime({ root: rootA, mounter });
  await fs.mkdir(path.join(work, 'A', 'rootfs'), { recursive: true });
  const db = await a.create({ rootfs: path.join(work, 'A', 'rootfs'), volumes: ['/var/lib/postgres', '/var/log'] });
  const dirOf = (p: string) => path.join(rootA, 'volumes', db.volumes.find((v) => v.path === p)!.volumeId);
  await fs.mkdir(path.join(dirOf('/var/lib/postgres'), 'base/1'), { recursive: true });
  await fs.writeFile(path.join(dirOf('/var/lib/postgres'), 'PG_VERSION'), '16\n');
  await fs.writeFile(path.join(dirOf('/var/lib/postgres'), 'base/1/16384'), Buffer.alloc(8 * MiB, 0x5a));
  await fs.chown(path.join(dirOf('/var/lib/postgres'), 'base/1/16384'), 999, 999);
  await fs.symlink('base/1/16384', path.join(dirOf('/var/lib/postgres'), 'current'));
  let line = 0;
  const log = path.join(dirOf('/var/log'), 'postgresql.log');
  writer = setInterval(() => void fs.appendFile(log, `LOG: checkpoint ${++line}\n`), 5);
  console.log(`host A: db ${db.id} with /var/lib/postgres (8 MiB table) and /var/log, written to all along`);

  const destination = `root@${lab.b.address}:${lab.b.incoming}/db`;
  const syncFromA = async (): Promise<SyncResult> => {
    const run = await lab!.onA([...tsx, fileURLToPath(import.meta.url), '--sync-on-host-a', rootA, db.id, destination, JSON.stringify(lab!.ssh)]);
    return JSON.parse(String(run.stdout).trim().split('\n').at(-1)!) as SyncResult;
  };
  const first = await syncFromA();
  console.log(`sync 1: ${first.filesTransferred} files sent, ${kb(first.bytesSent)} over ssh`);
  // A change while it runs: one block of the table.
  const table = await fs.open(path.join(dirOf('/var/lib/postgres'), 'base/1/16384'), 'r+');
  await table.write(Buffer.alloc(8192, 0x11), 0, 8192, 4 * MiB);
  await table.close();
  const second = await syncFromA();
  console.log(`sync 2 (the writer still running): ${second.filesTransferred} files sent, ${kb(second.bytesSent)} over ssh (${kb(second.literalData)} of new data)`);

  // Downtime starts: stop the writer, then one last, short sync.
  clearInterval(writer);
  writer = undefined;
  await new Promise((resolve) => setTimeout(resolve, 50));
  const last = await syncFromA();
  console.log(`writer stopped; final sync: ${last.filesTransferred} files sent, ${kb(last.bytesSent)} over ssh`);

  // Host B creates the container from the synced tree: the receiving key's request.
  const asked = await lab.onA(['ssh', ...lab.receiveSsh, `root@${lab.b.address}`, 'restore-synced', 'db']);
  const restored = JSON.parse(String(asked.stdout).trim()) as { container: string; volumes: string[] };
  console.log(`host B restored container ${restored.container}: ${restored.volumes.sort().join(', ')}`);

  const b = new ContainerRuntime({ root: lab.b.root, mounter });
  const copy = await b.get(restored.container);
  for (const volume of db.volumes) {
    const there = path.join(lab.b.root, 'volumes', copy.volumes.find((v) => v.path === volume.path)!.volumeId);
    const [mine, theirs] = [await fingerprint(dirOf(volume.path)), await fingerprint(there)];
    console.log(`${volume.path}: fingerprint ${mine} on A, ${theirs} on B: ${mine === theirs ? 'same' : 'DIFFERENT'}`);
    if (mine !== theirs) throw new Error(`${volume.path} differs between the hosts`);
  }
  await b.remove(copy.id, { volumes: true });
  await a.remove(db.id, { volumes: true });
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  if (writer) clearInterval(writer);
  await lab?.close();
  await fs.rm(work, { recursive: true, force: true });
}
console.log(process.exitCode ? 'move-to-another-host FAILED' : 'move-to-another-host done: both hosts torn down, temporary directories deleted');

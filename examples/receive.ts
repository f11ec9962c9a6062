// The receiving end on host B: takes a backup stream (from ssh) or a synced tree and
// creates the container there, with B's own state root. Use it as the forced command of
// the ssh key host A sends with, so that the key can do nothing else:
//
//   # ~root/.ssh/authorized_keys on host B
//   restrict,command="tsx /opt/cv/receive.ts --root /var/lib/cv --rootfs-parent /srv/rootfs --incoming /srv/incoming" ssh-ed25519 AAAA… backup@a
//
// Then, on host A:
//   runtime.backup(id, ssh.stdin)            with ssh = spawn('ssh', [...opts, 'root@b'])
//   ssh root@b restore-synced db             after runtime.sync(id, 'root@b:/srv/incoming/db')
//
// What ssh asks for (SSH_ORIGINAL_COMMAND, or the arguments after the options when run
// by hand): nothing, to restore the backup stream on stdin; `restore-synced NAME`, to
// restore the sync destination <incoming>/NAME. Prints one JSON line: the new container
// ({"container", "rootfs", "volumes"}) or {"error", "message"}, then exits 0 or 1.
// Each container gets a new rootfs directory under --rootfs-parent.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { BindMounter, ContainerRuntime, ContainerVolumesError } from 'container-volumes';

const { values, positionals } = parseArgs({
  options: { root: { type: 'string' }, 'rootfs-parent': { type: 'string' }, incoming: { type: 'string' } },
  allowPositionals: true,
});
const print = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`);
const request = process.env.SSH_ORIGINAL_COMMAND !== undefined ? process.env.SSH_ORIGINAL_COMMAND.trim().split(/\s+/).filter(Boolean) : positionals;

// The connection going away (ssh hangs up, the sender is killed) must not leave a
// half-restored container: abort, and restore removes what it made.
const controller = new AbortController();
for (const signal of ['SIGHUP', 'SIGTERM', 'SIGINT', 'SIGPIPE'] as const) process.on(signal, () => controller.abort(new Error(`received ${signal}`)));
process.stdout.on('error', () => controller.abort(new Error('stdout closed')));

let rootfs: string | undefined;
try {
  if (!values.root || !values['rootfs-parent']) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'usage: receive.ts --root DIR --rootfs-parent DIR [--incoming DIR] [restore-synced NAME]');
  let source: string | Readable;
  if (request.length === 0) {
    source = process.stdin;
  } else if (request[0] === 'restore-synced' && request.length === 2 && /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(request[1]!) && values.incoming) {
    source = path.join(values.incoming, request[1]!);
  } else {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `unknown request ${JSON.stringify(request.join(' '))}: nothing, or restore-synced NAME`);
  }
  const runtime = new ContainerRuntime({ root: values.root, mounter: new BindMounter() });
  await fs.mkdir(values['rootfs-parent'], { recursive: true });
  rootfs = await fs.mkdtemp(path.join(values['rootfs-parent'], 'restored-'));
  const container = await runtime.restore(source, { rootfs, signal: controller.signal });
  print({ container: container.id, rootfs, volumes: container.volumes.map((v) => v.path) });
} catch (error) {
  if (rootfs) await fs.rm(rootfs, { recursive: true, force: true });
  const code = error instanceof ContainerVolumesError ? error.code : 'ERROR';
  print({ error: code, message: (error as Error).message });
  process.exitCode = 1;
} finally {
  // stdin may still be open (a refused request): do not wait for it.
  process.stdin.destroy();
}

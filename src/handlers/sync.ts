import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Context } from '../context.js';
import { checkVolumesExist } from '../operations/containers.js';
import { ContainerVolumesError, describe } from '../errors.js';
import { placeMounts } from '../plan/mount-plan.js';
import { checkReference } from '../rules/ids.js';
import { isBelow } from '../rules/volume-path.js';
import { type BackupManifest, MANIFEST_NAME, makeManifest, manifestText } from './archive-format.js';
import { recordHandlerNamespace, withHandlerContainer } from './handler-container.js';
import { throwIfAborted } from './handler-error.js';
import { runInNamespace } from './namespace-command.js';
import { checkSshArgs, RSYNC, RsyncOutput, type RsyncStats, sshCommand, VANISHED } from './rsync.js';
import { type BackupOptions, progressOptions } from './transfer-options.js';

/** Options of `sync`: progress and abort as for `backup`, and ssh's arguments for a remote destination. */
export interface SyncOptions extends BackupOptions {
  /**
   * Arguments for ssh, for a remote destination: `['-i', '/root/.ssh/id_backup', '-p',
   * '2222', '-o', 'UserKnownHostsFile=/etc/cv/known_hosts']`. None may hold whitespace,
   * quotes or backslashes (ERR_INVALID_ARGUMENT): rsync would split or unquote it. Unused
   * for a local destination.
   */
  ssh?: string[];
}

/**
 * What `sync` resolves to: the manifest it wrote, what rsync transferred, and what it
 * warned about. The counts of files and data are those of the volumes' pass; `bytesSent`
 * and `bytesReceived` add the manifest's.
 */
export interface SyncResult extends BackupManifest, RsyncStats {
  /**
   * The destination as rsync got it: the local directory or `[user@]host:/path`, its path
   * made absolute and clean, without a trailing slash.
   */
  destination: string;
  /** rsync's warnings, one per line: files that vanished while it read them (the volumes were being written). */
  warnings: string[];
}

/**
 * Mirrors every volume of `containerId` into `destination/<container path>/…`, plus the
 * manifest, with rsync: a local directory, or `[user@]host:/path` over ssh. The volumes
 * are shared read-only with a handler container, and rsync reads them mounted at their
 * container paths in a private mount namespace, nested volumes inside their parents.
 * Anything in `destination` that is not in the volumes is deleted. The manifest is
 * removed by the first pass and written by the last, so a destination holds one only
 * when its last sync completed.
 */
export async function sync(ctx: Context, containerId: string, destination: unknown, options: unknown): Promise<SyncResult> {
  checkReference(containerId, 'container');
  const target = syncDestination(destination);
  const given = progressOptions<SyncOptions>(options, ['onProgress', 'signal', 'ssh']);
  const ssh = checkSshArgs(given.ssh);
  const { onProgress, signal } = given;
  if (target.local) await checkLocalDestination(ctx, target.local);
  throwIfAborted(signal);
  return withHandlerContainer(ctx, containerId, 'ro', undefined, signal, async (container, _volumes, source) => {
    await checkVolumesExist(ctx, source);
    if (source.volumes.some((v) => v.path === `/${MANIFEST_NAME}`)) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `container ${containerId} has a volume at /${MANIFEST_NAME}, where sync writes its manifest: back it up instead`);
    }
    const manifest = makeManifest(containerId, source.volumes);
    const remote = target.local ? [] : ['--rsh', sshCommand(ssh)];
    const what = `rsync of the volumes of container ${containerId} to ${target.spec}`;
    const output = new RsyncOutput(onProgress);
    // The handler's rootfs holds only the volumes' mount points: mirrored whole, with
    // --delete, the destination loses whatever the volumes no longer hold, the last
    // manifest included.
    const tree = await runInNamespace({
      what,
      argv: [...RSYNC, '--delete', ...remote, '--', `${container.rootfs}/`, `${target.spec}/`],
      plan: placeMounts(container, (id) => ctx.store.volumeDir(id)),
      // Recorded in its container, so that recover() never removes it while rsync still runs.
      onStart: (init) => recordHandlerNamespace(ctx, container.id, init),
      signal,
      stdout: output,
      toleratedExitCodes: [VANISHED],
      env: { LC_ALL: 'C' },
    });
    const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-sync-'));
    try {
      await fs.writeFile(path.join(scratch, MANIFEST_NAME), manifestText(manifest));
      const last = new RsyncOutput(undefined);
      await runInNamespace({ what, argv: [...RSYNC, ...remote, '--', path.join(scratch, MANIFEST_NAME), `${target.spec}/`], plan: [], signal, stdout: last, env: { LC_ALL: 'C' } });
      output.finish();
      const stats = output.stats();
      return {
        ...manifest,
        destination: target.spec,
        ...stats,
        bytesSent: stats.bytesSent + last.stats().bytesSent,
        bytesReceived: stats.bytesReceived + last.stats().bytesReceived,
        warnings: tree.stderr.split('\n').filter((line) => line.trim() !== ''),
      };
    } finally {
      await fs.rm(scratch, { recursive: true, force: true });
    }
  });
}

/** A local absolute directory, or `[user@]host:/absolute/path`; `spec` is what rsync gets (without a trailing slash). */
function syncDestination(given: unknown): { spec: string; local?: string } {
  const refuse = () =>
    new ContainerVolumesError('ERR_INVALID_ARGUMENT', `a sync destination must be an absolute directory or [user@]host:/absolute/path, got ${describe(given)}`);
  if (typeof given !== 'string' || given.includes('\0')) throw refuse();
  if (given.startsWith('/')) {
    const local = path.resolve(given);
    if (local === '/') throw refuse();
    return { spec: local, local };
  }
  // A user and host that ssh cannot take for an option, and never rsync's daemon syntax (host::module).
  const remote = /^((?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])):(\/[^\0]*)$/.exec(given);
  if (!remote) throw refuse();
  const remotePath = path.posix.resolve(remote[2]!);
  if (remotePath === '/') throw refuse();
  return { spec: `${remote[1]}:${remotePath}` };
}

/** Found before anything is created: a parent that is missing, or a destination inside the store. */
async function checkLocalDestination(ctx: Context, dir: string): Promise<void> {
  if (dir === ctx.store.root || isBelow(dir, ctx.store.root) || isBelow(ctx.store.root, dir)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `the sync destination ${dir} overlaps the state directory ${ctx.store.root}`);
  }
  const stat = await fs.stat(path.dirname(dir)).catch(() => undefined);
  if (!stat?.isDirectory()) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `the sync destination's parent ${path.dirname(dir)} is not a directory`);
  const own = await fs.lstat(dir).catch(() => undefined);
  if (own && !own.isDirectory()) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `the sync destination ${dir} is not a directory`);
}

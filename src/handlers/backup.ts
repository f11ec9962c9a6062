import { randomBytes } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { type Context, optionsObject } from '../context.js';
import { checkVolumesExist, createContainer, removeContainer } from '../containers.js';
import { debugRuntime } from '../debug.js';
import { ContainerVolumesError, describe } from '../errors.js';
import { placeMounts } from '../mount-plan.js';
import { checkReference, isId } from '../rules/ids.js';
import { isBelow, normalizeVolumePath } from '../rules/volume-path.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { MountRequest } from '../mounter/mounter.js';
import type { Mode } from '../types.js';
import { failedOnlyOnLongNames, planDeepMembers } from './deep-members.js';
import { type NamespaceInit, privateMounts } from './namespace.js';
import { placeVolumes } from './place-volumes.js';
import { HandlerError, recordHandlerNamespace, throwIfAborted, withHandlerContainer } from './run-handler.js';

/** The first member of every backup archive: what it holds. */
export const MANIFEST_NAME = 'container-volumes-backup.json';

export interface BackupManifest {
  format: 'container-volumes-backup';
  version: 1;
  createdAt: string;
  /** The container whose volumes were archived. */
  containerId: string;
  /** Each volume, archived under its container path (without the leading `/`). */
  volumes: { path: string; mode: Mode; volumeId: string }[];
}

/** What `backup` resolves to: the manifest it wrote, and what tar warned about. */
export interface BackupResult extends BackupManifest {
  /**
   * GNU tar's warnings, one per line: files that changed, shrank or vanished while it
   * read them (the volumes were being written: the archive is then not a snapshot),
   * sockets it skips. Empty when tar said nothing.
   */
  warnings: string[];
}

export interface Progress {
  bytesDone: number;
  /** An estimate until the end, when it equals bytesDone. */
  bytesTotal: number;
}

export interface BackupOptions {
  onProgress?: (progress: Progress) => void;
  signal?: AbortSignal;
}

export interface RestoreOptions extends BackupOptions {
  /** The rootfs of the new container that receives the volumes. */
  rootfs: string;
}

/**
 * Writes one tar archive of every volume of `containerId`, each under its container
 * path, after a manifest. A handler container shares the volumes read-only while tar
 * reads them in a private mount namespace, so the archive shows them exactly as the
 * container does: nested volumes inside their parents. The archive is written to a new,
 * uniquely named file beside `destination` and renamed over it only when complete.
 */
export async function backup(ctx: Context, containerId: string, destination: unknown, options: unknown): Promise<BackupResult> {
  checkReference(containerId, 'container');
  const target = archivePath(destination, 'destination');
  const { onProgress, signal } = progressOptions(options, ['onProgress', 'signal']);
  throwIfAborted(signal);
  // Our own new file, never one that is there already: anyone who may write in the
  // destination's directory could have put a symlink to a file of root's at a fixed
  // name, and two backups to one destination would write into one file.
  const partial = path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString('hex')}.partial`);
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  // Opened first: a destination that cannot be written is the caller's mistake, found
  // before any container exists, and not an error event of a stream nobody listens to.
  const output = await fs.open(partial, flags, 0o600).catch((error: NodeJS.ErrnoException) => {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `cannot write the backup next to ${target}: ${error.message}`, { cause: error });
  });
  try {
    const result = await withHandlerContainer(ctx, containerId, 'ro', undefined, signal, async (container, volumes, source) => {
      await checkVolumesExist(ctx, source);
      const manifest: BackupManifest = {
        format: 'container-volumes-backup',
        version: 1,
        createdAt: new Date().toISOString(),
        containerId,
        // The source's own modes: the handler container's are all 'ro'.
        volumes: source.volumes.map(({ path: p, mode, volumeId }) => ({ path: p, mode, volumeId })),
      };
      const bytesTotal = await estimateArchiveSize(volumes.map((v) => v.hostPath));
      const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-backup-'));
      try {
        await fs.writeFile(path.join(scratch, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`);
        const members = outermost(manifest.volumes);
        const tar = ['tar', '--create', '--file=-', '--sparse', '--numeric-owner', '--xattrs', '--acls', '--format=posix'];
        tar.push(`--directory=${scratch}`, MANIFEST_NAME);
        // GNU tar refuses a --directory with no member after it.
        if (members.length > 0) tar.push(`--directory=${container.rootfs}`, '--', ...members);
        const plan = placeMounts(container, (id) => ctx.store.volumeDir(id));
        const warnings = await runTar(plan, tar, {
          stdout: output.createWriteStream(),
          bytesTotal,
          onProgress,
          signal,
          liveInput: true,
          // Recorded in its container, so that recover() never removes it while tar still runs.
          onStart: (init) => recordHandlerNamespace(ctx, container.id, init),
        });
        return { ...manifest, warnings };
      } finally {
        await fs.rm(scratch, { recursive: true, force: true });
      }
    });
    await fs.rename(partial, target);
    return result;
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  } finally {
    await output.close();
  }
}

/**
 * Creates a new container with `rootfs` whose volumes hold exactly what the archive
 * holds: contents, ownership, modes, extended attributes, ACLs, links, sparse files.
 * tar extracts the volumes' paths into one staging directory inside a new volume, so
 * on the volumes' own file system, where a hard link between two volumes can be made
 * as well as one inside a volume; each volume's tree is then moved into its directory.
 * The volumes are the new container's own (read-write, origin `created`). If anything
 * fails, the new container and its volumes are removed again.
 */
export async function restore(ctx: Context, archive: unknown, options: unknown): Promise<ContainerConfig> {
  const source = archivePath(archive, 'archive');
  const { rootfs, onProgress, signal } = progressOptions(options, ['rootfs', 'onProgress', 'signal']);
  if (signal?.aborted) throw new HandlerError('ERR_HANDLER_ABORTED', `restoring ${source} was aborted before it started`);
  const manifest = await readManifest(source);
  const bytesTotal = (await fs.stat(source)).size;
  const config = await ctx.store.exclusive(() =>
    createContainer(ctx, { rootfs, paths: manifest.volumes.map((v) => v.path), volumesFrom: [], copyUp: false }),
  );
  const members = outermost(manifest.volumes);
  // Without volumes there is nothing to extract, and tar given no member would extract every one.
  if (members.length === 0) return config;
  try {
    const volumes = config.volumes.map((v) => ({ path: v.path, dir: ctx.store.volumeDir(v.volumeId) }));
    // In a volume of the new container: nobody else uses it yet, and recover() never
    // empties a volume, while it does empty the store's trash.
    const staging = await fs.mkdtemp(path.join(volumes[0]!.dir, '.container-volumes-restore-'));
    // Every extended attribute, not only GNU tar's default user.*: file capabilities
    // (security.capability), trusted.* and security.* are what copy-up keeps too.
    const tar = ['tar', '--extract', '--file=-', '--numeric-owner', '--same-owner', '--same-permissions', '--xattrs', '--xattrs-include=*', '--acls'];
    // No --exclude of the manifest: tar would drop every member of that name at any depth.
    // Only the volumes' paths are extracted, and of the manifest, only a volume at its path.
    const extract = [...tar];
    tar.push(`--directory=${staging}`, '--', ...members);
    await runTar([], tar, { stdin: createReadStream(source), bytesTotal, onProgress, signal, liveInput: false }).catch(async (error: unknown) => {
      // A tree deeper than PATH_MAX: tar extracted all the rest, and the deep members follow, a chain of -C steps below.
      if (!(error instanceof HandlerError && error.code === 'ERR_HANDLER_FAILED' && failedOnlyOnLongNames(error.stderr))) throw error;
      await extractDeepMembers(source, staging, extract, signal);
    });
    await placeVolumes(staging, volumes, (why) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${source} cannot be restored: ${why}`));
    return config;
  } catch (error) {
    await ctx.store
      .exclusive(() => removeContainer(ctx, config.id, true, true))
      .catch((e: Error) => debugRuntime('removing half-restored container %s failed: %s', config.id, e.message));
    throw error;
  }
}

/**
 * Extracts the members too long for one tar run, one run per chain of -C steps, each
 * member named (with --no-recursion: a deep directory alone, its members by their own
 * names), with the attributes every extraction keeps. Costs a listing and a read of the
 * archive per chain, only for archives that hold such members.
 */
async function extractDeepMembers(source: string, staging: string, extract: readonly string[], signal: AbortSignal | undefined): Promise<void> {
  const { groups, parents } = await planDeepMembers(source, (why) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${source} cannot be restored: ${why}`));
  const lists = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-restore-'));
  const run = async (names: Buffer[], strip: number, steps: string[]) => {
    if (names.length === 0) return;
    const list = path.join(lists, 'members');
    // NUL-separated bytes, taken verbatim: names are bytes and may start with '-'.
    await fs.writeFile(list, Buffer.concat(names.flatMap((m) => [m, Buffer.from([0])])));
    const tar = [...extract, '--no-recursion', '--null', '--no-unquote', '--verbatim-files-from', `--strip-components=${strip}`];
    tar.push(`--directory=${staging}`, ...steps.map((step) => `--directory=${step}`), `--files-from=${list}`);
    await runTar([], tar, { stdin: createReadStream(source), bytesTotal: 0, onProgress: undefined, signal, liveInput: false });
  };
  try {
    for (const group of groups) await run(group.members, group.strip, group.steps);
    // Each run wrote into directories an earlier one had finished: their times (and only
    // that: tar re-creates no directory that exists) are set once more, from the archive.
    for (const group of groups) await run(group.directories, group.strip, group.steps);
    await run(parents, 0, []);
  } finally {
    await fs.rm(lists, { recursive: true, force: true });
  }
}

/** The paths to hand to tar: the volumes not inside another one (those come with their parent), relative. */
function outermost(volumes: readonly { path: string }[]): string[] {
  return volumes.filter((v) => !volumes.some((o) => isBelow(v.path, o.path))).map((v) => v.path.slice(1));
}

interface TarIo {
  stdin?: Readable;
  stdout?: Writable;
  bytesTotal: number;
  onProgress: ((progress: Progress) => void) | undefined;
  /** Called with the init of tar's namespaces before anything is mounted there. */
  onStart?: (init: NamespaceInit) => Promise<void>;
  signal: AbortSignal | undefined;
  /**
   * tar reads volumes that may be in use. GNU tar then exits 1 ("some files differ": a
   * file changed, shrank or vanished while read), which is no failure of a backup of a
   * live volume, only a warning that the archive is not a snapshot.
   */
  liveInput: boolean;
}

/**
 * Runs GNU tar in a private mount namespace with `plan` mounted, counting the archive's
 * bytes. Resolves to what tar warned about, one line each.
 */
async function runTar(plan: readonly MountRequest[], argv: string[], io: TarIo): Promise<string[]> {
  const mounts = await privateMounts(plan, io.onStart);
  try {
    let bytesDone = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytesDone += chunk.length;
        io.onProgress?.({ bytesDone, bytesTotal: Math.max(io.bytesTotal, bytesDone) });
        callback(null, chunk);
      },
    });
    const subprocess = mounts.run(
      argv,
      {
        reject: false,
        stdin: io.stdin ? 'pipe' : 'ignore',
        stdout: io.stdout ? 'pipe' : 'ignore',
        buffer: { stdout: false, stderr: true },
        env: { LC_ALL: 'C' },
      },
      { signal: io.signal },
    );
    const streaming = io.stdin
      ? pipeline(io.stdin, counter, subprocess.stdin as Writable)
      : pipeline(subprocess.stdout as Readable, counter, io.stdout as Writable);
    const [result, streamError] = await Promise.all([subprocess, streaming.then(() => undefined, (e: NodeJS.ErrnoException) => e)]);
    const stderr = typeof result.stderr === 'string' ? result.stderr : '';
    if (mounts.stopped === 'abort') throw new HandlerError('ERR_HANDLER_ABORTED', `${argv[1]} was aborted`, { stderr }, { cause: io.signal?.reason });
    // tar stops reading at the end of the archive, so data after it (padding) breaks the pipe into it.
    const tarStoppedReading = io.stdin !== undefined && BROKEN_PIPE.has(streamError?.code ?? '');
    // Before tar's status: tar fails too when our end fails (ENOSPC), and only says "broken pipe".
    if (streamError && !tarStoppedReading) {
      throw new HandlerError('ERR_HANDLER_FAILED', `tar ${argv[1]}: the archive stream failed: ${streamError.message}`, { stderr }, { cause: streamError });
    }
    if (result.exitCode !== 0 && !(io.liveInput && result.exitCode === 1)) {
      throw new HandlerError('ERR_HANDLER_FAILED', `tar ${argv[1]} failed (exit code ${result.exitCode}): ${stderr.slice(-500)}`, {
        ...(result.exitCode === undefined ? {} : { exitCode: result.exitCode }),
        stderr,
      });
    }
    io.onProgress?.({ bytesDone, bytesTotal: bytesDone });
    return stderr.split('\n').filter((line) => line.trim() !== '');
  } finally {
    await mounts.close();
  }
}

/** How writing into a subprocess that has closed its stdin fails. */
const BROKEN_PIPE = new Set(['EPIPE', 'ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']);

/** Reads and checks the manifest, the one thing in an archive that becomes paths before tar runs. */
async function readManifest(archive: string): Promise<BackupManifest> {
  const invalid = (why: string) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${archive} is not a container-volumes backup: ${why}`);
  // tar would decompress the manifest from a file but not the archive from a pipe: refuse it here, and say why.
  const header = await firstBlock(archive).catch((error: Error) => {
    throw invalid(`it cannot be read (${error.message})`);
  });
  if (header.toString('latin1', 257, 262) !== 'ustar') {
    const compressed = COMPRESSED.find(([, magic]) => magic.every((byte, i) => header[i] === byte));
    throw invalid(compressed ? `it is compressed (${compressed[0]}): decompress it first` : 'it is not an uncompressed POSIX tar archive');
  }
  // The first member of that name only, exactly that name: a volume at /<MANIFEST_NAME>
  // is a directory of that name, with files under it. tar stops reading there.
  const result = await execa('tar', ['--extract', '--to-stdout', '--occurrence=1', '--no-recursion', `--file=${archive}`, '--', MANIFEST_NAME], {
    reject: false,
    stdin: 'ignore',
    env: { LC_ALL: 'C' },
    maxBuffer: 16 * 1024 * 1024,
  });
  if (result.exitCode !== 0) throw invalid(`no ${MANIFEST_NAME} in it (${String(result.stderr).trim()})`);
  let raw: unknown;
  try {
    raw = JSON.parse(String(result.stdout));
  } catch {
    throw invalid('its manifest is not JSON');
  }
  const m = raw as Partial<BackupManifest>;
  if (m?.format !== 'container-volumes-backup' || m.version !== 1) throw invalid('unknown manifest format or version');
  if (!Array.isArray(m.volumes)) throw invalid('the manifest has no volume list');
  const volumes = m.volumes.map((v: unknown, i) => {
    const { path: p, mode, volumeId } = (v ?? {}) as Record<string, unknown>;
    let clean: string;
    try {
      clean = normalizeVolumePath(p);
    } catch (error) {
      throw invalid(`volumes[${i}]: ${(error as Error).message}`);
    }
    if (clean !== p || (mode !== 'ro' && mode !== 'rw') || !isId(volumeId)) throw invalid(`volumes[${i}] is malformed`);
    return { path: clean, mode: mode as Mode, volumeId };
  });
  if (new Set(volumes.map((v) => v.path)).size !== volumes.length) throw invalid('two volumes share a path');
  return { ...(m as BackupManifest), volumes };
}

/** The magic numbers of the compressors whose output a backup may be mistaken for. */
const COMPRESSED: [string, number[]][] = [
  ['gzip', [0x1f, 0x8b]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
];

/** The first 512-byte block of `file`: a tar header, in a tar archive (zero-filled if the file is shorter). */
async function firstBlock(file: string): Promise<Buffer> {
  const handle = await fs.open(file, 'r');
  try {
    const block = Buffer.alloc(512);
    await handle.read(block, 0, block.length, 0);
    return block;
  } finally {
    await handle.close();
  }
}

/**
 * Roughly what tar will write: the allocated data of the volumes, each hard-linked file
 * once, as du counts it. du walks by descriptors at any depth and takes names as bytes;
 * on a live volume a file may go while it looks, so its total is best-effort, and no
 * total at all is an estimate of 0 (bytesTotal then follows bytesDone).
 */
async function estimateArchiveSize(dirs: readonly string[]): Promise<number> {
  if (dirs.length === 0) return 1024;
  const du = await execa('du', ['--summarize', '--total', '--block-size=1', '--', ...dirs], {
    reject: false,
    stdin: 'ignore',
    stderr: 'ignore',
    env: { LC_ALL: 'C' },
  });
  const total = /^(\d+)\ttotal$/m.exec(String(du.stdout).split('\n').filter(Boolean).at(-1) ?? '');
  if (!total) debugRuntime('du gave no total (exit code %s): the backup size is not estimated', du.exitCode);
  return total ? Number(total[1]) : 0;
}

function archivePath(given: unknown, what: string): string {
  if (typeof given !== 'string' || !given.startsWith('/') || given.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `the ${what} must be an absolute file path, got ${describe(given)}`);
  }
  return given;
}

function progressOptions<K extends keyof RestoreOptions>(options: unknown, keys: readonly K[]): Partial<RestoreOptions> {
  const given = optionsObject<RestoreOptions>(options, 'options', keys);
  if (given.onProgress !== undefined && typeof given.onProgress !== 'function') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `onProgress must be a function, got ${describe(given.onProgress)}`);
  }
  if (given.signal !== undefined && !(given.signal instanceof AbortSignal)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `signal must be an AbortSignal, got ${describe(given.signal)}`);
  }
  return given;
}

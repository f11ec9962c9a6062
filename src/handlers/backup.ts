import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { type Context, optionsObject } from '../context.js';
import { createContainer, removeContainer } from '../containers.js';
import { debugRuntime } from '../debug.js';
import { ContainerVolumesError, describe } from '../errors.js';
import { planMounts } from '../mount-plan.js';
import { checkReference, isId } from '../spec/ids.js';
import { isBelow, normalizeVolumePath } from '../spec/volume-path.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { Mode } from '../types.js';
import { privateMounts } from './namespace.js';
import { HandlerError, throwIfAborted, withHandlerContainer } from './run-handler.js';

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
 * container does: nested volumes inside their parents. The archive is written beside
 * `destination` and renamed over it only when complete.
 */
export async function backup(ctx: Context, containerId: string, destination: unknown, options: unknown): Promise<BackupManifest> {
  checkReference(containerId, 'container');
  const target = archivePath(destination, 'destination');
  const { onProgress, signal } = progressOptions(options, ['onProgress', 'signal']);
  throwIfAborted(signal);
  const partial = `${target}.partial`;
  // Opened first: a destination that cannot be written is the caller's mistake, found
  // before any container exists, and not an error event of a stream nobody listens to.
  const output = await fs.open(partial, 'w', 0o600).catch((error: NodeJS.ErrnoException) => {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `cannot write the backup next to ${target}: ${error.message}`, { cause: error });
  });
  try {
    const manifest = await withHandlerContainer(ctx, containerId, 'ro', undefined, signal, async (container, volumes, source) => {
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
        await runTar(ctx, container, tar, { stdout: output.createWriteStream(), bytesTotal, onProgress, signal });
        return manifest;
      } finally {
        await fs.rm(scratch, { recursive: true, force: true });
      }
    });
    await fs.rename(partial, target);
    return manifest;
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  } finally {
    await output.close();
  }
}

/**
 * Creates a new container with `rootfs` whose volumes hold exactly what the archive
 * holds: contents, ownership, modes, symlinks, sparse files. The volumes are the new
 * container's own (read-write, origin `created`). If anything fails, the new container
 * and its volumes are removed again.
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
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-restore-'));
  try {
    const tar = ['tar', '--extract', '--file=-', '--numeric-owner', '--same-owner', '--same-permissions', '--xattrs', '--acls'];
    tar.push(`--directory=${scratch}`, `--exclude=${MANIFEST_NAME}`, '--', ...members);
    await runTar(ctx, { ...config, rootfs: scratch }, tar, { stdin: createReadStream(source), bytesTotal, onProgress, signal });
    return config;
  } catch (error) {
    await ctx.store
      .exclusive(() => removeContainer(ctx, config.id, true, true))
      .catch((e: Error) => debugRuntime('removing half-restored container %s failed: %s', config.id, e.message));
    throw error;
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
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
  signal: AbortSignal | undefined;
}

/** Runs GNU tar with `container`'s volumes mounted under its rootfs in a private mount namespace, counting the archive's bytes. */
async function runTar(ctx: Context, container: ContainerConfig, argv: string[], io: TarIo): Promise<void> {
  const mounts = await privateMounts(planMounts(container, (id) => ctx.store.volumeDir(id)));
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
    if (result.exitCode !== 0) {
      throw new HandlerError('ERR_HANDLER_FAILED', `tar ${argv[1]} failed (exit code ${result.exitCode}): ${stderr.slice(-500)}`, {
        ...(result.exitCode === undefined ? {} : { exitCode: result.exitCode }),
        stderr,
      });
    }
    io.onProgress?.({ bytesDone, bytesTotal: bytesDone });
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
  const result = await execa('tar', ['--extract', '--to-stdout', `--file=${archive}`, '--', MANIFEST_NAME], {
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

/** Roughly what tar will write: a header per entry and the allocated data of each file. */
async function estimateArchiveSize(dirs: readonly string[]): Promise<number> {
  let total = 1024;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      const stat = await fs.lstat(full);
      total += 512 + (stat.isFile() ? Math.ceil(Math.min(stat.size, stat.blocks * 512) / 512) * 512 : 0);
      if (stat.isDirectory()) await walk(full);
    }
  };
  for (const dir of dirs) await walk(dir);
  return total;
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

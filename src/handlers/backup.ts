import { createReadStream, createWriteStream } from 'node:fs';
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
import { checkId, isId } from '../spec/ids.js';
import { isBelow, normalizeVolumePath } from '../spec/volume-path.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { Mode } from '../types.js';
import { privateMounts } from './namespace.js';
import { HandlerError, untilAborted, withHandlerContainer } from './run-handler.js';

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
  checkId(containerId, 'container');
  const target = archivePath(destination, 'destination');
  const { onProgress, signal } = progressOptions(options, ['onProgress', 'signal']);
  return withHandlerContainer(ctx, containerId, 'ro', undefined, signal, async (container, volumes) => {
    const manifest: BackupManifest = {
      format: 'container-volumes-backup',
      version: 1,
      createdAt: new Date().toISOString(),
      containerId,
      volumes: volumes.map(({ path: p, mode, volumeId }) => ({ path: p, mode, volumeId })),
    };
    const bytesTotal = await estimateArchiveSize(volumes.map((v) => v.hostPath));
    const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-backup-'));
    const partial = `${target}.partial`;
    try {
      await fs.writeFile(path.join(scratch, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`);
      const tar = ['tar', '--create', '--file=-', '--sparse', '--numeric-owner', '--xattrs', '--acls', '--format=posix'];
      tar.push(`--directory=${scratch}`, MANIFEST_NAME, `--directory=${container.rootfs}`, '--', ...outermost(manifest.volumes));
      await runTar(ctx, container, tar, { stdout: createWriteStream(partial, { mode: 0o600 }), bytesTotal, onProgress, signal });
      await fs.rename(partial, target);
      return manifest;
    } catch (error) {
      await fs.rm(partial, { force: true });
      throw error;
    } finally {
      await fs.rm(scratch, { recursive: true, force: true });
    }
  });
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
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-restore-'));
  try {
    const tar = ['tar', '--extract', '--file=-', '--numeric-owner', '--same-owner', '--same-permissions', '--xattrs', '--acls'];
    tar.push(`--directory=${scratch}`, `--exclude=${MANIFEST_NAME}`, '--', ...outermost(manifest.volumes));
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
    const subprocess = mounts.run(argv, {
      reject: false,
      stdin: io.stdin ? 'pipe' : 'ignore',
      stdout: io.stdout ? 'pipe' : 'ignore',
      buffer: { stdout: false, stderr: true },
      env: { LC_ALL: 'C' },
      ...(io.signal ? { cancelSignal: io.signal } : {}),
    });
    const streaming = io.stdin
      ? pipeline(io.stdin, counter, subprocess.stdin as Writable)
      : pipeline(subprocess.stdout as Readable, counter, io.stdout as Writable);
    const [result, streamError] = await Promise.all([subprocess, untilAborted(streaming, io.signal).then(() => undefined, (e: unknown) => e)]);
    const stderr = typeof result.stderr === 'string' ? result.stderr : '';
    if (result.isCanceled) throw new HandlerError('ERR_HANDLER_ABORTED', `${argv[1]} was aborted`, { stderr });
    if (result.exitCode !== 0) {
      throw new HandlerError('ERR_HANDLER_FAILED', `tar ${argv[1]} failed (exit code ${result.exitCode}): ${stderr.slice(-500)}`, {
        ...(result.exitCode === undefined ? {} : { exitCode: result.exitCode }),
        stderr,
      });
    }
    if (streamError) {
      throw new HandlerError('ERR_HANDLER_FAILED', `tar ${argv[1]}: the archive stream failed: ${(streamError as Error).message}`, {}, { cause: streamError });
    }
    io.onProgress?.({ bytesDone, bytesTotal: bytesDone });
  } finally {
    await mounts.close();
  }
}

/** Reads and checks the manifest, the one thing in an archive that becomes paths before tar runs. */
async function readManifest(archive: string): Promise<BackupManifest> {
  const invalid = (why: string) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${archive} is not a container-volumes backup: ${why}`);
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

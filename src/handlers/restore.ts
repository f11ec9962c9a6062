import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Context } from '../context.js';
import { createContainer, removeContainer } from '../operations/containers.js';
import { debugRuntime } from '../debug.js';
import { ContainerVolumesError } from '../errors.js';
import type { ContainerConfig } from '../store/container-config.js';
import { ArchiveEnd, MANIFEST_NAME, MAX_MANIFEST, outermost, parseManifest, readManifest } from './archive-format.js';
import { failedOnlyOnLongNames, PATH_MAX, planDeepMembers } from './deep-members.js';
import { HandlerError } from './handler-error.js';
import { runInNamespace } from './namespace-command.js';
import { placeVolumes } from './place-volumes.js';
import { RSYNC, RsyncOutput } from './rsync.js';
import { archivePath, progressOptions, type RestoreOptions } from './transfer-options.js';

/** Every extended attribute, not only GNU tar's default user.*: file capabilities (security.capability), trusted.* and security.* are what copy-up keeps too. */
const EXTRACT = ['tar', '--extract', '--file=-', '--numeric-owner', '--same-owner', '--same-permissions', '--xattrs', '--xattrs-include=*', '--acls'];

/**
 * Creates a new container with `rootfs` whose volumes hold exactly what the archive
 * holds: contents, ownership, modes, extended attributes, ACLs, links, sparse files.
 * The archive is a file, or a stream read once, from its start. tar extracts the
 * volumes' paths into one staging directory inside a new volume, so on the volumes'
 * own file system, where a hard link between two volumes can be made as well as one
 * inside a volume; each volume's tree is then moved into its directory. The volumes are
 * the new container's own (read-write, origin `created`). If anything fails, a stream
 * that breaks or ends early included, the new container and its volumes are removed again.
 */
export async function restore(ctx: Context, source: unknown, options: unknown): Promise<ContainerConfig> {
  const input = isReadable(source) ? undefined : archivePath(source, 'archive');
  const { rootfs, onProgress, signal } = progressOptions<RestoreOptions>(options, ['rootfs', 'onProgress', 'signal']);
  const name = input ?? 'the archive stream';
  if (signal?.aborted) throw new HandlerError('ERR_HANDLER_ABORTED', `restoring ${name} was aborted before it started`);
  const invalid = (why: string) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${name} cannot be restored: ${why}`);
  let stream: Readable;
  let bytesTotal = 0;
  if (input === undefined) {
    stream = source as Readable;
  } else {
    const stat = await fs.stat(input).catch((error: Error) => {
      throw new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${input} is not a container-volumes backup: it cannot be read (${error.message})`, { cause: error });
    });
    if (stat.isDirectory()) return restoreTree(ctx, input, rootfs, onProgress, signal);
    stream = createReadStream(input);
    bytesTotal = stat.size;
  }
  const manifest = await readManifest(stream, name).catch((error: unknown) => {
    // A caller's stream stays theirs (what was read is put back); our file is closed.
    if (input !== undefined) stream.destroy();
    throw error;
  });
  // From here on: a stream that fails before tar reads it (while the container is made)
  // must not throw its error at top level, and its error is the one to report.
  let streamError: Error | undefined;
  let reading = false;
  // Once tar reads it, the pipeline into tar reports the stream's failures (and causes some: a premature close when tar fails).
  const onStreamError = (error: Error) => (reading ? undefined : (streamError ??= error));
  stream.on('error', onStreamError);
  const end = new ArchiveEnd();
  let bytesDone = 0;
  const onChunk = (chunk: Buffer) => {
    end.feed(chunk);
    bytesDone += chunk.length;
    onProgress?.({ bytesDone, bytesTotal: Math.max(bytesTotal, bytesDone) });
  };
  let config: ContainerConfig | undefined;
  try {
    config = await ctx.store.exclusive(() => createContainer(ctx, { rootfs, paths: manifest.volumes.map((v) => v.path), volumesFrom: [], copyUp: false }));
    const members = outermost(manifest.volumes);
    if (members.length === 0) {
      // Without volumes there is nothing to extract (tar given no member would extract every one): the archive is only read to its end.
      for await (const chunk of stream) {
        onChunk(Buffer.from(chunk as Buffer));
        if (end.reached) break;
      }
    } else {
      const volumes = config.volumes.map((v) => ({ path: v.path, dir: ctx.store.volumeDir(v.volumeId) }));
      // In a volume of the new container: nobody else uses it yet, and recover() never
      // empties a volume, while it does empty the store's trash.
      const staging = await fs.mkdtemp(path.join(volumes[0]!.dir, '.container-volumes-restore-'));
      // No --exclude of the manifest: tar would drop every member of that name at any depth.
      // Only the volumes' paths are extracted, and of the manifest, only a volume at its path.
      const argv = [...EXTRACT, `--directory=${staging}`, '--', ...members];
      reading = true;
      await runInNamespace({ what: `tar --extract of ${name}`, argv, plan: [], signal, stdin: stream, onChunk, env: { LC_ALL: 'C' } }).catch(
        async (error: unknown) => {
          // A tree deeper than PATH_MAX: tar extracted all the rest, and the deep members follow, a chain of -C steps below.
          if (!(error instanceof HandlerError && error.code === 'ERR_HANDLER_FAILED' && failedOnlyOnLongNames(error.stderr))) throw error;
          if (input === undefined) throw invalid(`it holds paths longer than ${PATH_MAX} bytes, which can be restored from a file only`);
          await extractDeepMembers(input, staging, signal);
        },
      );
      await placeVolumes(staging, volumes, (why) => invalid(why));
    }
    if (!end.reached) throw invalid('it ends before its end-of-archive marker: it was cut short');
    onProgress?.({ bytesDone, bytesTotal: bytesDone });
    return config;
  } catch (error) {
    stream.destroy();
    if (config) await removeHalfRestored(ctx, config.id);
    if (streamError && !(error instanceof HandlerError && error.code === 'ERR_HANDLER_ABORTED')) {
      throw new HandlerError('ERR_HANDLER_FAILED', `restoring ${name} failed: the archive stream failed: ${streamError.message}`, {}, { cause: streamError });
    }
    throw error;
  } finally {
    // The listener stays: a destroyed stream may still emit its error on a later tick.
    if (input !== undefined) stream.destroy();
  }
}

/**
 * Restores a `sync` destination: the manifest, and each volume's tree under its
 * container path. rsync copies the outermost volumes' trees (with everything nested in
 * them) into one staging directory inside a new volume, with what sync keeps; they are
 * then placed as a tar extraction's are. A tree without a manifest is refused: its last
 * sync did not complete (sync writes the manifest last).
 */
async function restoreTree(ctx: Context, dir: string, rootfs: unknown, onProgress: RestoreOptions['onProgress'], signal: AbortSignal | undefined): Promise<ContainerConfig> {
  const invalid = (why: string) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${dir} cannot be restored: ${why}`);
  const manifestFile = path.join(dir, MANIFEST_NAME);
  const stat = await fs.lstat(manifestFile).catch(() => undefined);
  if (!stat?.isFile()) throw invalid(`it holds no ${MANIFEST_NAME}: it is neither a backup nor a complete sync destination`);
  if (stat.size > MAX_MANIFEST) throw invalid('its manifest is too large');
  const manifest = parseManifest(await fs.readFile(manifestFile, 'utf8'), invalid);
  const members = outermost(manifest.volumes);
  // rsync --relative follows no symlink it is given, but it does follow one on the way to it.
  for (const member of members) {
    let current = dir;
    for (const component of member.split('/')) {
      current = path.join(current, component);
      const entry = await fs.lstat(current).catch(() => undefined);
      if (entry && !entry.isDirectory()) throw invalid(`${path.relative(dir, current)} is not a directory in it`);
      if (!entry) break;
    }
  }
  const config = await ctx.store.exclusive(() => createContainer(ctx, { rootfs, paths: manifest.volumes.map((v) => v.path), volumesFrom: [], copyUp: false }));
  try {
    const present = [];
    for (const member of members) if (await fs.lstat(path.join(dir, member)).catch(() => undefined)) present.push(member);
    if (present.length > 0) {
      const volumes = config.volumes.map((v) => ({ path: v.path, dir: ctx.store.volumeDir(v.volumeId) }));
      const staging = await fs.mkdtemp(path.join(volumes[0]!.dir, '.container-volumes-restore-'));
      const output = new RsyncOutput(onProgress);
      const sources = present.map((member) => `${dir}/./${member}`);
      await runInNamespace({ what: `rsync from ${dir}`, argv: [...RSYNC, '--relative', '--', ...sources, `${staging}/`], plan: [], signal, stdout: output, env: { LC_ALL: 'C' } });
      output.finish();
      await placeVolumes(staging, volumes, invalid);
    }
    return config;
  } catch (error) {
    await removeHalfRestored(ctx, config.id);
    throw error;
  }
}

async function removeHalfRestored(ctx: Context, containerId: string): Promise<void> {
  await ctx.store
    .exclusive(() => removeContainer(ctx, containerId, true, true))
    .catch((e: Error) => debugRuntime('removing half-restored container %s failed: %s', containerId, e.message));
}

/** A Node stream to read the archive from (its own `read` and `unshift` are used). */
function isReadable(value: unknown): value is Readable {
  const stream = value as Partial<Readable> | null;
  return typeof stream === 'object' && stream !== null && ['read', 'unshift', 'on', 'pipe', 'destroy'].every((m) => typeof stream[m as keyof Readable] === 'function');
}

/**
 * Extracts the members too long for one tar run, one run per chain of -C steps, each
 * member named (with --no-recursion: a deep directory alone, its members by their own
 * names), with the attributes every extraction keeps. Costs a listing and a read of the
 * archive per chain, only for archives that hold such members.
 */
async function extractDeepMembers(source: string, staging: string, signal: AbortSignal | undefined): Promise<void> {
  const { groups, parents } = await planDeepMembers(source, (why) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${source} cannot be restored: ${why}`));
  const lists = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-restore-'));
  const run = async (names: Buffer[], strip: number, steps: string[]) => {
    if (names.length === 0) return;
    const list = path.join(lists, 'members');
    // NUL-separated bytes, taken verbatim: names are bytes and may start with '-'.
    await fs.writeFile(list, Buffer.concat(names.flatMap((m) => [m, Buffer.from([0])])));
    const tar = [...EXTRACT, '--no-recursion', '--null', '--no-unquote', '--verbatim-files-from', `--strip-components=${strip}`];
    tar.push(`--directory=${staging}`, ...steps.map((step) => `--directory=${step}`), `--files-from=${list}`);
    await runInNamespace({ what: `tar --extract of ${source}`, argv: tar, plan: [], signal, stdin: createReadStream(source), env: { LC_ALL: 'C' } });
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

import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { execa } from 'execa';
import type { Context } from '../context.js';
import { checkVolumesExist } from '../operations/containers.js';
import { debugRuntime } from '../debug.js';
import { ContainerVolumesError } from '../errors.js';
import { placeMounts } from '../plan/mount-plan.js';
import { checkReference } from '../rules/ids.js';
import { type BackupManifest, MANIFEST_NAME, makeManifest, manifestText, outermost } from './archive-format.js';
import { recordHandlerNamespace, withHandlerContainer } from './handler-container.js';
import { throwIfAborted } from './handler-error.js';
import { runInNamespace } from './namespace-command.js';
import { archivePath, type BackupOptions, progressOptions } from './transfer-options.js';

/** What `backup` resolves to: the manifest it wrote, and what tar warned about. */
export interface BackupResult extends BackupManifest {
  /**
   * GNU tar's warnings, one per line: files that changed, shrank or vanished while it
   * read them (the volumes were being written: the archive is then not a snapshot),
   * sockets it skips. Empty when tar said nothing.
   */
  warnings: string[];
}

/**
 * Writes one tar archive of every volume of `containerId`, each under its container
 * path, after a manifest. A handler container shares the volumes read-only while tar
 * reads them in a private mount namespace, so the archive shows them exactly as the
 * container does: nested volumes inside their parents. A file `destination` is
 * written to a new, uniquely named file beside it and renamed over it only when
 * complete; a stream is ended when the archive is complete, and destroyed otherwise.
 */
export async function backup(ctx: Context, containerId: string, destination: unknown, options: unknown): Promise<BackupResult> {
  checkReference(containerId, 'container');
  const stream = isWritable(destination) ? destination : undefined;
  const target = stream ? undefined : archivePath(destination, 'destination');
  const { onProgress, signal } = progressOptions<BackupOptions>(options, ['onProgress', 'signal']);
  if (stream && (stream.destroyed || stream.writableEnded)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'the destination stream is already ended or destroyed');
  }
  throwIfAborted(signal);
  if (stream) return writeArchive(ctx, containerId, stream, onProgress, signal);
  // Our own new file, never one that is there already: anyone who may write in the
  // destination's directory could have put a symlink to a file of root's at a fixed
  // name, and two backups to one destination would write into one file.
  const file = target!;
  const partial = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.partial`);
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  // Opened first: a destination that cannot be written is the caller's mistake, found
  // before any container exists, and not an error event of a stream nobody listens to.
  const output = await fs.open(partial, flags, 0o600).catch((error: NodeJS.ErrnoException) => {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `cannot write the backup next to ${file}: ${error.message}`, { cause: error });
  });
  try {
    const result = await writeArchive(ctx, containerId, output.createWriteStream(), onProgress, signal);
    await fs.rename(partial, file);
    return result;
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  } finally {
    await output.close();
  }
}

/** A Node stream to write the archive to. */
function isWritable(value: unknown): value is Writable {
  const stream = value as Partial<Writable> | null;
  return typeof stream === 'object' && stream !== null && ['write', 'end', 'on', 'once', 'destroy'].every((m) => typeof stream[m as keyof Writable] === 'function');
}

/**
 * Has tar write the archive of the volumes of `containerId` into `archive`, and ends
 * `archive` once tar has succeeded; destroys it with the error otherwise, so that
 * whatever reads it never sees a clean end of an incomplete archive.
 */
async function writeArchive(
  ctx: Context,
  containerId: string,
  archive: Writable,
  onProgress: BackupOptions['onProgress'],
  signal: AbortSignal | undefined,
): Promise<BackupResult> {
  const gate = new HeldTail(archive);
  try {
    const result = await withHandlerContainer(ctx, containerId, 'ro', undefined, signal, async (container, volumes, source) => {
      await checkVolumesExist(ctx, source);
      // The source's own modes: the handler container's are all 'ro'.
      const manifest = makeManifest(containerId, source.volumes);
      const bytesTotal = await estimateArchiveSize(volumes.map((v) => v.hostPath));
      const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-backup-'));
      try {
        await fs.writeFile(path.join(scratch, MANIFEST_NAME), manifestText(manifest));
        const members = outermost(manifest.volumes);
        const tar = ['tar', '--create', '--file=-', '--sparse', '--numeric-owner', '--xattrs', '--acls', '--format=posix'];
        tar.push(`--directory=${scratch}`, MANIFEST_NAME);
        // GNU tar refuses a --directory with no member after it.
        if (members.length > 0) tar.push(`--directory=${container.rootfs}`, '--', ...members);
        let bytesDone = 0;
        const { stderr } = await runInNamespace({
          what: `tar --create of the volumes of container ${containerId}`,
          argv: tar,
          plan: placeMounts(container, (id) => ctx.store.volumeDir(id)),
          // Recorded in its container, so that recover() never removes it while tar still runs.
          onStart: (init) => recordHandlerNamespace(ctx, container.id, init),
          signal,
          stdout: gate,
          onChunk: (chunk) => {
            bytesDone += chunk.length;
            onProgress?.({ bytesDone, bytesTotal: Math.max(bytesTotal, bytesDone) });
          },
          // GNU tar exits 1 when "some files differ": a file changed, shrank or vanished while read.
          toleratedExitCodes: [1],
          env: { LC_ALL: 'C' },
        });
        onProgress?.({ bytesDone, bytesTotal: bytesDone });
        return { ...manifest, warnings: stderr.split('\n').filter((line) => line.trim() !== '') };
      } finally {
        await fs.rm(scratch, { recursive: true, force: true });
      }
    });
    await gate.release();
    return result;
  } catch (error) {
    gate.abandon();
    // Not with the error: a caller's stream with no error listener would throw it at top level.
    archive.destroy();
    throw error;
  }
}

/**
 * GNU tar ends an archive with two zero blocks, padded to its 10 KiB record: a reader
 * that meets them takes the archive as complete, and tar writes them even when it fails
 * (a file it could not read). The last two records are held back until `release()`, so
 * a failed backup never carries that end: whatever extracts what it did write fails
 * ("Unexpected EOF in archive").
 */
class HeldTail extends Writable {
  static readonly SIZE = 2 * 10240;
  #held = Buffer.alloc(0);
  #settled = false;
  readonly #out: Writable;

  constructor(out: Writable) {
    super();
    this.#out = out;
    // Its errors reach the backup through tar's pipeline into it; before or after that, there is nobody to tell.
    this.on('error', () => undefined);
    out.on('error', (error) => this.destroy(error));
    // Closed under us (a pipe whose reader went away) it may emit no error, and a write would wait for 'drain' forever.
    out.on('close', () => {
      if (!this.#settled) this.destroy(new Error('the destination stream closed before the archive was complete'));
    });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const all = this.#held.length === 0 ? chunk : Buffer.concat([this.#held, chunk]);
    const cut = Math.max(0, all.length - HeldTail.SIZE);
    this.#held = Buffer.from(all.subarray(cut));
    if (cut === 0 || this.#out.write(all.subarray(0, cut))) callback();
    else this.#out.once('drain', () => callback());
  }

  /** The backup failed: the output is destroyed, not ended, and its closing is no news. */
  abandon(): void {
    this.#settled = true;
  }

  /** Writes what was held back and ends the output, once everything is written. */
  async release(): Promise<void> {
    this.#settled = true;
    // Not stream.finished: it waits for 'close' too, which a stream left open never emits.
    await new Promise<void>((resolve, reject) => {
      this.#out.once('error', reject);
      this.#out.end(this.#held, () => resolve());
    });
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

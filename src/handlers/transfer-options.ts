import { optionsObject } from '../rules/options.js';
import { debugRuntime } from '../debug.js';
import { ContainerVolumesError, describe } from '../errors.js';

/* The options `backup`, `restore` and `sync` share. */

/** How far a `backup`, `restore` or `sync` has got, in bytes. */
export interface Progress {
  /**
   * Bytes done so far; it never decreases. `backup`: bytes of the archive tar has
   * written. `restore` of an archive: bytes of it read (reading stops near its
   * end-of-archive marker, so padding after it may not be counted). `sync`, and
   * `restore` of a sync destination: rsync's count of file data sent, where a new or
   * changed file counts whole (however little of it crossed the network) and an
   * unchanged one not at all.
   */
  bytesDone: number;
  /**
   * An estimate until the end, when it equals bytesDone; never below bytesDone, but it
   * may go down. `backup`: the volumes' allocated size as du counts it before tar starts
   * (0 when du gives none). `restore`: the archive file's size; from a stream it is not
   * known and follows bytesDone. `sync`, and `restore` of a sync destination: worked out
   * from rsync's percentage, which is of the whole file data, unchanged files included,
   * so a re-sync that sends little ends well below its earlier estimates.
   */
  bytesTotal: number;
}

/** Options of `backup`, and the ones `restore` and `sync` share with it. Unknown keys are refused (ERR_INVALID_ARGUMENT). */
export interface BackupOptions {
  /**
   * Called as the data goes (per chunk, tens of KiB apart: throttle costly drawing),
   * and once more when all of it is through, with `bytesDone === bytesTotal`. That last
   * call is not success: only the returned promise says whether the call succeeded (a
   * backup can still fail writing the archive's end). Progress never decides the
   * outcome: an exception it throws is ignored (logged under
   * `DEBUG=container-volumes:runtime`), and the transfer goes on.
   */
  onProgress?: (progress: Progress) => void;
  /**
   * Aborting stops the transfer (tar or rsync is killed) and rejects with
   * ERR_HANDLER_ABORTED; a signal already aborted rejects before anything is created.
   * What is left: `backup`, no partial file (a destination stream is destroyed);
   * `restore`, no container; `sync`, a destination that may be partly updated, and holds
   * a manifest again only once a sync completes, so `restore` never takes it half-updated.
   */
  signal?: AbortSignal;
}

/** Options of `restore`: the new container's rootfs, and progress and abort as for `backup`. */
export interface RestoreOptions extends BackupOptions {
  /**
   * The rootfs of the new container that receives the volumes: an existing absolute
   * directory, not `/`, not overlapping the store (ERR_INVALID_ROOTFS otherwise).
   */
  rootfs: string;
}

export function archivePath(given: unknown, what: string): string {
  if (typeof given !== 'string' || !given.startsWith('/') || given.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `the ${what} must be an absolute file path, got ${describe(given)}`);
  }
  return given;
}

export function progressOptions<T extends BackupOptions>(options: unknown, keys: readonly (keyof T & string)[]): Partial<T> {
  const given = optionsObject<T>(options, 'options', keys);
  if (given.onProgress !== undefined && typeof given.onProgress !== 'function') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `onProgress must be a function, got ${describe(given.onProgress)}`);
  }
  if (given.signal !== undefined && !(given.signal instanceof AbortSignal)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `signal must be an AbortSignal, got ${describe(given.signal)}`);
  }
  const report = given.onProgress;
  if (report === undefined) return given;
  // Called from stream events: a throw there would be an uncaught exception that ends the embedding process.
  const onProgress = (progress: Progress) => {
    try {
      report(progress);
    } catch (error) {
      debugRuntime('onProgress threw, ignored: %s', (error as Error)?.message ?? String(error));
    }
  };
  return { ...given, onProgress };
}

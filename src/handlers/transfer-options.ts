import { optionsObject } from '../context.js';
import { ContainerVolumesError, describe } from '../errors.js';

/* The options `backup`, `restore` and `sync` share. */

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
  return given;
}

import path from 'node:path';
import { ContainerVolumesError, describe } from './errors.js';
import type { Mounter } from './mounter/mounter.js';
import { Store } from './store/store.js';

/** What `new ContainerRuntime(options)` and `new VolumeManager(options)` take. */
export interface ContainerVolumesOptions {
  /** State directory, an absolute path: volumes and configurations live under it. Created if missing. */
  root: string;
  /** What attaches volumes: `new BindMounter()` for real bind mounts, `new FakeMounter()` in tests. */
  mounter: Mounter;
}

/** What every operation works with: the store on disk and the mounter. */
export interface Context {
  store: Store;
  mounter: Mounter;
}

export function createContext(options: ContainerVolumesOptions): Context {
  if (options === undefined) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', 'options with root and mounter are required');
  const { root, mounter } = optionsObject<ContainerVolumesOptions>(options, 'options', ['root', 'mounter']);
  if (typeof root !== 'string' || root === '' || root.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.root must be a non-empty path, got ${describe(root)}`);
  }
  // Refused rather than resolved against the working directory, as a relative rootfs is:
  // two processes started from different directories would otherwise use two stores.
  if (!path.isAbsolute(root)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.root must be an absolute path, got ${describe(root)}`);
  }
  const methods = ['mount', 'unmount', 'list'] as const;
  if (typeof mounter !== 'object' || mounter === null || methods.some((m) => typeof mounter[m] !== 'function')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.mounter must implement ${methods.join(', ')}`);
  }
  return { store: new Store(root), mounter };
}

/**
 * Checks an options object. Unknown keys are refused rather than ignored, so that a
 * typo (`volume:` for `volumes:`) is an error instead of a container without volumes.
 */
export function optionsObject<T extends object>(given: unknown, what: string, known: readonly (keyof T & string)[]): Partial<T> {
  if (given === undefined) return {};
  if (typeof given !== 'object' || given === null || Array.isArray(given)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be an object, got ${describe(given)}`);
  }
  const unknown = Object.keys(given).filter((key) => !(known as readonly string[]).includes(key));
  if (unknown.length > 0) {
    throw new ContainerVolumesError(
      'ERR_INVALID_ARGUMENT',
      `${what} has unknown option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${known.join(', ')})`,
    );
  }
  return given as Partial<T>;
}

export function optionalBoolean(given: unknown, what: string): boolean | undefined {
  if (given === undefined || typeof given === 'boolean') return given;
  throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be a boolean, got ${describe(given)}`);
}

import { ContainerVolumesError } from './errors.js';
import type { Mounter } from './mounter/mounter.js';
import { describe } from './spec/volume-path.js';
import { Store } from './store/store.js';

export interface ContainerVolumesOptions {
  /** State directory: volumes and configurations live under it. Created if missing. */
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
  if (typeof options !== 'object' || options === null) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options must be an object, got ${describe(options)}`);
  }
  const { root, mounter } = options;
  if (typeof root !== 'string' || root === '' || root.includes('\0')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.root must be a non-empty path, got ${describe(root)}`);
  }
  const methods = ['mount', 'unmount', 'list'] as const;
  if (typeof mounter !== 'object' || mounter === null || methods.some((m) => typeof mounter[m] !== 'function')) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `options.mounter must implement ${methods.join(', ')}`);
  }
  return { store: new Store(root), mounter };
}

export function optionsObject<T extends object>(given: unknown, what: string): Partial<T> {
  if (given === undefined) return {};
  if (typeof given !== 'object' || given === null || Array.isArray(given)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be an object, got ${describe(given)}`);
  }
  return given as Partial<T>;
}

export function optionalBoolean(given: unknown, what: string): boolean | undefined {
  if (given === undefined || typeof given === 'boolean') return given;
  throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be a boolean, got ${describe(given)}`);
}

import path from 'node:path';
import { ContainerVolumesError, describe } from './errors.js';
import type { Mounter } from './mounter/mounter.js';
import { Store } from './store/store.js';
import { optionsObject } from './rules/options.js';

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

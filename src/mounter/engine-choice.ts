import { ContainerVolumesError, describe } from '../errors.js';
import { debugMount } from '../debug.js';
import { KernelEngine } from './kernel/engine.js';
import { kernelMountApi } from './kernel/probe.js';
import { findOnPath } from './find-on-path.js';

/** How a BindMounter makes its mounts: the kernel's mount API, or util-linux's `mount` and `umount`. */
export type MountEngine = 'kernel' | 'util-linux';

const ENGINES: readonly MountEngine[] = ['kernel', 'util-linux'];

/** Picks the engine of every BindMounter made without the `engine` option (the test runner runs the suite once per engine). */
export const ENGINE_VARIABLE = 'CONTAINER_VOLUMES_MOUNT_ENGINE';

export interface ChosenEngine {
  name: MountEngine;
  /** Set when `name` is 'kernel'. */
  kernel?: KernelEngine;
}

let kernelEngine: KernelEngine | undefined;

/**
 * The engine to use: the one asked for (the option, else the environment variable),
 * which must be able to run here (ERR_MOUNT_ENGINE_UNAVAILABLE), or else the kernel's
 * when it can run, util-linux otherwise. DEBUG=container-volumes:mount says why.
 */
export function chooseEngine(option: unknown): ChosenEngine {
  const fromVariable = process.env[ENGINE_VARIABLE];
  const [asked, by] =
    option !== undefined ? [option, 'options.engine'] : fromVariable ? [fromVariable, `the environment variable ${ENGINE_VARIABLE}`] : [undefined, ''];
  if (asked !== undefined && !ENGINES.includes(asked as MountEngine)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${by} must be one of ${ENGINES.map((e) => `'${e}'`).join(', ')}, got ${describe(asked)}`);
  }
  const api = asked === 'util-linux' ? undefined : kernelMountApi();
  if (api?.calls) {
    kernelEngine ??= new KernelEngine(api.calls);
    debugMount('engine kernel: %s', asked ? `asked for by ${by}` : "the kernel's mount API is usable");
    return { name: 'kernel', kernel: kernelEngine };
  }
  if (asked === 'kernel') {
    throw new ContainerVolumesError(
      'ERR_MOUNT_ENGINE_UNAVAILABLE',
      `the kernel mount engine, asked for by ${by}, cannot run here: ${api?.reason}. ` +
        "It needs Linux 5.12 or later on x64 or arm64 and the optional dependency koffi installed (npm install koffi); or ask for { engine: 'util-linux' }",
    );
  }
  const missing = utilLinuxMissing();
  if (missing !== undefined) {
    if (asked === 'util-linux') {
      throw new ContainerVolumesError('ERR_MOUNT_ENGINE_UNAVAILABLE', `the util-linux mount engine, asked for by ${by}, cannot run here: ${missing}`);
    }
    debugMount('engine util-linux, though it cannot run either (%s): %s', missing, api?.reason);
    return { name: 'util-linux' };
  }
  debugMount('engine util-linux: %s', asked ? `asked for by ${by}` : `the kernel's mount API cannot be used: ${api?.reason}`);
  return { name: 'util-linux' };
}

/** Why util-linux's `mount` and `umount` cannot be run here, if they cannot. */
function utilLinuxMissing(): string | undefined {
  if (process.platform !== 'linux') return `bind mounts need Linux, not ${process.platform}`;
  const missing = ['mount', 'umount'].filter((tool) => findOnPath(tool) === undefined);
  return missing.length > 0 ? `${missing.join(' and ')} not found on PATH (install util-linux)` : undefined;
}

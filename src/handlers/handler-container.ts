import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Context } from '../context.js';
import { createContainer } from '../operations/containers.js';
import { debugRuntime } from '../debug.js';
import { currentBootId } from '../store/boot-id.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { Mode, VolumeMount } from '../types.js';
import { throwIfAborted } from './handler-error.js';
import type { NamespaceInit } from './namespace.js';

/** A volume as a handler sees it: the mount, plus where its data is on the host. */
export interface HandlerVolume extends VolumeMount {
  /**
   * The volume's directory in the store (`<root>/volumes/<id>`), where a function handler
   * reads and writes its data. This process can write there whatever `mode` says:
   * only a command handler gets the volumes mounted read-only.
   */
  hostPath: string;
}

/**
 * Creates the transient container that shares the target's volumes, runs `body`, and
 * removes the container whatever happens. While it exists the volumes are in use, so
 * they cannot be removed or pruned. It records this process, so that recover() removes
 * it if the process dies first. `body` also gets the target's configuration, with its own modes.
 */
export async function withHandlerContainer<T>(
  ctx: Context,
  targetId: string,
  mode: Mode | undefined,
  rootfs: string | undefined,
  signal: AbortSignal | undefined,
  body: (container: ContainerConfig, volumes: HandlerVolume[], target: ContainerConfig) => Promise<T>,
): Promise<T> {
  throwIfAborted(signal);
  const scratch = rootfs ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-handler-')));
  try {
    // The target is read under the same lock: its configuration is then exactly what the handler container shares.
    const { container, target } = await ctx.store.exclusive(async () => ({
      target: await ctx.store.readContainer(targetId),
      container: await createContainer(ctx, {
        rootfs: scratch,
        paths: [],
        volumesFrom: [{ containerId: targetId, mode }],
        copyUp: false,
        handler: { handler: { pid: process.pid, bootId: currentBootId() } },
      }),
    }));
    try {
      const volumes = container.volumes.map((v) => ({ ...v, origin: { from: targetId }, hostPath: ctx.store.volumeDir(v.volumeId) }));
      return await body(container, volumes, target);
    } finally {
      // Not through `remove`: the container is ours, its handler has ended here, and nothing
      // of it was mounted on the host (unmounting by its plan would take the host's mounts
      // of the same volumes at the same paths, such as the target's in its own rootfs).
      await ctx.store
        .exclusive(async () => ctx.store.deleteContainer(await ctx.store.readContainer(container.id)))
        .catch((e: Error) => debugRuntime('removing handler container %s failed (recover() will): %s', container.id, e.message));
    }
  } finally {
    if (rootfs === undefined) await fs.rm(scratch, { recursive: true, force: true });
  }
}

/**
 * Records the init of a command handler's namespaces in its container, before the
 * volumes are mounted there: while it lives, `remove` and `recover()` know that a
 * process may still use them, even once the process running the handler is gone.
 * A container removed meanwhile (`remove` with force) stops the handler here.
 */
export async function recordHandlerNamespace(ctx: Context, containerId: string, namespace: NamespaceInit): Promise<void> {
  await ctx.store.exclusive(async () => {
    const config = await ctx.store.readContainer(containerId);
    if (!config.handler) throw new Error(`container ${containerId} is not a handler container`);
    await ctx.store.writeContainer({ ...config, handler: { ...config.handler, namespace } }, config);
  });
}

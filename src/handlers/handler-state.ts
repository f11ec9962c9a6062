import { ContainerVolumesError } from '../errors.js';
import { isAlive } from '../namespaces/process-alive.js';
import { currentBootId } from '../store/boot-id.js';
import type { ContainerConfig } from '../store/container-config.js';
import { initAlive, stopNamespace } from './namespace.js';

/* Whether a handler's transient container is still in use, as any process can tell from its configuration. */

type HandlerRecord = NonNullable<ContainerConfig['handler']>;

/** Whether the process that runs the handler lives (a pid of another boot names nothing). */
export function runnerAlive(handler: HandlerRecord): boolean {
  return handler.bootId === currentBootId() && isAlive(handler.pid);
}

/** Whether a process of a command handler's namespaces may still have the volumes mounted. */
export function namespaceAlive(handler: HandlerRecord): boolean {
  return handler.bootId === currentBootId() && handler.namespace !== undefined && initAlive(handler.namespace);
}

/** Whether the handler may still use its volumes: its runner lives, or a process of its namespaces does. */
export function handlerRunning(handler: HandlerRecord): boolean {
  return runnerAlive(handler) || namespaceAlive(handler);
}

/**
 * Lets a handler container be removed only once nothing of its handler runs. With
 * `force`, a command handler's processes are killed first and waited for; a function
 * handler runs inside its process and cannot be stopped from here, so it is refused
 * even then: deleting its container would let its volumes be deleted under it.
 */
export async function checkHandlerEnded(config: ContainerConfig, force: boolean): Promise<void> {
  const { handler } = config;
  if (!handler || !handlerRunning(handler)) return;
  const running = `container ${config.id} is the transient container of a handler that runs in process ${handler.pid}`;
  if (!force) {
    throw new ContainerVolumesError('ERR_HANDLER_RUNNING', `${running}: it is removed when the handler ends; pass { force: true } to kill a command handler`);
  }
  if (!handler.namespace) {
    throw new ContainerVolumesError('ERR_HANDLER_RUNNING', `${running}, and only that process can stop it (abort it through its signal)`);
  }
  if (!(await stopNamespace(handler.namespace))) {
    throw new ContainerVolumesError('ERR_HANDLER_RUNNING', `${running}: its processes did not die when killed`);
  }
}

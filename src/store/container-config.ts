import { ContainerVolumesError } from '../errors.js';
import { rootfsProblem } from '../rootfs/check-rootfs.js';
import { isId } from '../rules/ids.js';
import { isBootId } from './boot-id.js';
import { isPid, isStartTime } from '../namespaces/process-alive.js';
import { isNamespaceId, type MountNamespace } from '../namespaces/mount-namespace.js';
import { normalizeVolumePath } from '../rules/volume-path.js';
import { checkIdMap, copyIdMap } from '../rules/idmap.js';
import type { ContainerInfo, IdMap, VolumeMount } from '../types.js';
import type { KnownNamespace } from './namespace-registry.js';

/** What `containers/<id>.json` holds: the single source of truth for a container's volumes. */
export interface ContainerConfig extends ContainerInfo {
  version: 1;
  /** The boot in which `mounted` became true: after a reboot no mount survives (recover() resets it). */
  mountedInBoot?: string;
  /** The mount namespace in which `mounted` became true: mounts are invisible from any other. */
  mountedIn?: MountNamespace;
  /**
   * Set on a handler's transient container: the process running it, so recover() can
   * remove it once that process is gone, and for a command handler the init of its
   * namespaces, recorded before anything is mounted there: while it lives, a process of
   * the handler may still use the volumes.
   */
  handler?: { pid: number; bootId: string; namespace?: { pid: number; startTime: number } };
  /**
   * The mount namespaces of running processes that `attach` mounted volumes in (one
   * entry per namespace), recorded before the first mount there: while one lives and
   * holds a volume of the container, the container is in use there.
   */
  attachedIn?: KnownNamespace[];
}

export function serializeConfig(config: ContainerConfig): string {
  return `${JSON.stringify(config, null, 2)}\n`;
}

/**
 * Parses a configuration read from disk. Everything in it is checked before use —
 * ids in particular, since they are joined into paths — so a tampered or truncated
 * file is refused with ERR_CORRUPT_CONFIG instead of steering a mount or a delete.
 */
export function parseConfig(text: string, expectedId: string, file: string, storeRoot: string): ContainerConfig {
  const corrupt = (why: string) =>
    new ContainerVolumesError('ERR_CORRUPT_CONFIG', `configuration ${file} of container ${expectedId} is corrupt: ${why}`);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw corrupt(`not JSON (${(error as Error).message})`);
  }
  if (!isObject(raw)) throw corrupt('not an object');
  const { version, id, rootfs, createdAt, mounted, volumes, mountedInBoot, mountedIn, handler, idmap, attachedIn } = raw;
  if (version !== 1) throw corrupt(`unknown version ${JSON.stringify(version)}`);
  if (id !== expectedId) throw corrupt(`its id ${JSON.stringify(id)} does not match its file name`);
  if (typeof rootfs !== 'string' || !rootfs.startsWith('/') || rootfs.includes('\0')) throw corrupt('bad rootfs');
  const problem = rootfsProblem(rootfs, storeRoot);
  if (problem) throw corrupt(`rootfs ${rootfs}: ${problem}`);
  if (typeof createdAt !== 'string' || Number.isNaN(Date.parse(createdAt))) throw corrupt('bad createdAt');
  if (typeof mounted !== 'boolean') throw corrupt('bad mounted flag');
  if (!Array.isArray(volumes)) throw corrupt('volumes is not an array');
  const parsed = volumes.map((entry, i) => parseVolumeMount(entry, (why) => corrupt(`volumes[${i}]: ${why}`)));
  if (new Set(parsed.map((v) => v.path)).size !== parsed.length) throw corrupt('two volumes share a path');
  if (mountedInBoot !== undefined && !isBootId(mountedInBoot)) throw corrupt('bad mountedInBoot');
  if (mountedIn !== undefined && !isMountNamespace(mountedIn)) throw corrupt('bad mountedIn');
  if (handler !== undefined && !(isObject(handler) && isPid(handler.pid) && isBootId(handler.bootId) && isNamespaceInit(handler.namespace))) {
    throw corrupt('bad handler');
  }
  let parsedIdmap: IdMap | undefined;
  try {
    parsedIdmap = idmap === undefined ? undefined : checkIdMap(idmap, 'idmap');
  } catch (error) {
    throw corrupt((error as Error).message);
  }
  if (attachedIn !== undefined && !(Array.isArray(attachedIn) && attachedIn.every(isAttachment))) throw corrupt('bad attachedIn');
  if (attachedIn !== undefined && new Set(attachedIn.map((a: KnownNamespace) => a.namespace)).size !== attachedIn.length) {
    throw corrupt('attachedIn names a namespace twice');
  }
  return {
    version: 1,
    id,
    rootfs,
    createdAt,
    mounted,
    volumes: parsed,
    ...(mountedInBoot === undefined ? {} : { mountedInBoot }),
    ...(mountedIn === undefined ? {} : { mountedIn: { namespace: mountedIn.namespace, pid: mountedIn.pid, startTime: mountedIn.startTime } }),
    ...(handler === undefined ? {} : { handler: parsedHandler(handler) }),
    ...(parsedIdmap === undefined ? {} : { idmap: parsedIdmap }),
    ...(attachedIn === undefined
      ? {}
      : { attachedIn: (attachedIn as KnownNamespace[]).map(({ namespace, pid, startTime, bootId }) => ({ namespace, pid, startTime, bootId })) }),
  };
}

function isAttachment(value: unknown): value is KnownNamespace {
  return isMountNamespace(value) && isBootId((value as unknown as Record<string, unknown>).bootId);
}



function isNamespaceInit(value: unknown): boolean {
  return value === undefined || (isObject(value) && isPid(value.pid) && isStartTime(value.startTime));
}

/** Only the checked fields, copied: nothing else from disk is carried along. */
function parsedHandler(handler: Record<string, unknown>): NonNullable<ContainerConfig['handler']> {
  const namespace = handler.namespace as { pid: number; startTime: number } | undefined;
  return {
    pid: handler.pid as number,
    bootId: handler.bootId as string,
    ...(namespace === undefined ? {} : { namespace: { pid: namespace.pid, startTime: namespace.startTime } }),
  };
}

function isMountNamespace(value: unknown): value is MountNamespace {
  return isObject(value) && isNamespaceId(value.namespace) && isPid(value.pid) && isStartTime(value.startTime);
}

function parseVolumeMount(entry: unknown, corrupt: (why: string) => Error): VolumeMount {
  if (!isObject(entry)) throw corrupt('not an object');
  const { path, volumeId, mode, origin } = entry;
  let cleanPath: string;
  try {
    cleanPath = normalizeVolumePath(path);
  } catch (error) {
    throw corrupt((error as Error).message);
  }
  if (cleanPath !== path) throw corrupt(`path ${JSON.stringify(path)} is not in clean form`);
  if (!isId(volumeId)) throw corrupt(`bad volume id ${JSON.stringify(volumeId)}`);
  if (mode !== 'rw' && mode !== 'ro') throw corrupt(`bad mode ${JSON.stringify(mode)}`);
  if (origin === 'created') return { path: cleanPath, volumeId, mode, origin };
  if (isObject(origin) && isId(origin.from)) return { path: cleanPath, volumeId, mode, origin: { from: origin.from } };
  throw corrupt(`bad origin ${JSON.stringify(origin)}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A defensive copy, so callers can never mutate what the store holds. */
export function toContainerInfo(config: ContainerConfig): ContainerInfo {
  return {
    id: config.id,
    rootfs: config.rootfs,
    volumes: config.volumes.map((v) => ({ ...v, origin: v.origin === 'created' ? 'created' : { ...v.origin } })),
    mounted: config.mounted,
    createdAt: config.createdAt,
    ...(config.handler ? { handler: { pid: config.handler.pid } } : {}),
    ...(config.idmap ? { idmap: copyIdMap(config.idmap) } : {}),
    ...(config.attachedIn?.length ? { attachedTo: config.attachedIn.map((a) => ({ pid: a.pid })) } : {}),
  };
}

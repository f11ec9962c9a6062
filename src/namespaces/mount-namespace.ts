import { readdirSync, readlinkSync } from 'node:fs';
import { ContainerVolumesError } from '../errors.js';
import { processStat } from './process-alive.js';
import { currentBootId } from '../store/boot-id.js';

/**
 * Where a container's mounts are: a mount namespace, and a process known to be in it.
 * Mounts made in one namespace are invisible in every other, so a process in another
 * namespace must neither remake them nor delete what they hold.
 */
export interface MountNamespace {
  /** The namespace as the kernel names it, `mnt:[<inode>]`: unique among the live namespaces of one boot. */
  namespace: string;
  /** A process that was in it, and its start time (clock ticks after boot): a reused pid has another. */
  pid: number;
  startTime: number;
}

const NAMESPACE_ID = /^mnt:\[[1-9][0-9]*\]$/;

export function isNamespaceId(value: unknown): value is string {
  return typeof value === 'string' && NAMESPACE_ID.test(value);
}

let current: MountNamespace | undefined;

/** The namespace this process mounts in. A process cannot change it: Node is multi-threaded and `setns` refuses. */
export function currentMountNamespace(): MountNamespace {
  current ??= { namespace: readlinkSync('/proc/self/ns/mnt'), pid: process.pid, startTime: (processStat(process.pid) as { startTime: number }).startTime };
  return current;
}

/**
 * A process in the namespace with the recorded id now, through which its mounts can be
 * read: the recorded process if it still is (its start time tells it from a reused pid),
 * else any; none once no process has it, or for a namespace of an earlier boot. The
 * kernel hands a dead namespace's id to the next new one, so a process found by the id
 * alone may be in a new namespace: callers look at what is mounted there
 * (mounted-elsewhere.ts).
 */
export function processInNamespace(ns: MountNamespace, bootId: string): number | undefined {
  if (bootId !== currentBootId()) return undefined;
  if (ns.namespace === currentMountNamespace().namespace) return process.pid;
  if (processStat(ns.pid)?.startTime === ns.startTime && namespaceOf(ns.pid) === ns.namespace) return ns.pid;
  return processesIn(ns.namespace)[0];
}

/**
 * The mount namespace of the live process `pid` now, with its start time; undefined
 * when there is no such process (or only its zombie, whose namespace is gone). The
 * start time is read on both sides of the namespace, so a pid reused in between is not
 * taken for the process first seen.
 */
export function mountNamespaceOf(pid: number): MountNamespace | undefined {
  const before = processStat(pid);
  if (before === undefined || before.state === 'Z') return undefined;
  const namespace = namespaceOf(pid);
  if (namespace === undefined || processStat(pid)?.startTime !== before.startTime) return undefined;
  return { namespace, pid, startTime: before.startTime };
}

/** The refusal of a process that is not there (any more). */
export function processGone(pid: number, cause?: unknown): ContainerVolumesError {
  return new ContainerVolumesError('ERR_PROCESS_NOT_FOUND', `no running process ${pid}: it has exited, or never was`, { cause });
}

/** The refusal of a process found in another mount namespace than the one recorded for it: it moved, or its pid was reused. */
export function processChanged(pid: number, recorded: string, now: string | undefined): ContainerVolumesError {
  return new ContainerVolumesError(
    'ERR_PROCESS_CHANGED',
    `process ${pid} is no longer in mount namespace ${recorded} (${now === undefined ? 'it has exited' : `it is in ${now} now`}): it moved to another one, or its pid was reused; nothing was done`,
  );
}

/**
 * The refusal to attach into this process's own mount namespace: there a volume is
 * mounted into the container's rootfs with `mount`, whose record `unmount`, `recover()`
 * and the rootfs checks all know.
 */
export function ownNamespaceRefused(pid: number): ContainerVolumesError {
  return new ContainerVolumesError(
    'ERR_ATTACH_OWN_NAMESPACE',
    `process ${pid} is in this process's own mount namespace (${currentMountNamespace().namespace}): mount the container with mount() instead of attaching`,
  );
}

/** The pids of the processes in a mount namespace now. */
export function processesIn(id: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^[1-9][0-9]*$/.test(name)) continue;
    const pid = Number(name);
    if (namespaceOf(pid) === id) found.push(pid);
  }
  return found;
}

function namespaceOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/mnt`);
  } catch {
    return undefined; // gone, or a kernel thread
  }
}

import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { ContainerVolumesError } from './errors.js';
import { currentBootId } from './store/boot-id.js';
import type { ContainerConfig } from './store/container-config.js';

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
  current ??= { namespace: readlinkSync('/proc/self/ns/mnt'), pid: process.pid, startTime: startTimeOf(process.pid) as number };
  return current;
}

/**
 * Whether the namespace still exists, so mounts made in it may still be in use. The
 * recorded process is asked first; when it is gone, any process still in the namespace
 * keeps it (and its mounts) alive, so every process is looked at. A namespace of an
 * earlier boot is gone.
 */
export function isNamespaceAlive(ns: MountNamespace, bootId: string): boolean {
  return processInNamespace(ns, bootId) !== undefined;
}

/** A process in the namespace now (the recorded one if it still is), to read its mounts through; none once it is gone. */
export function processInNamespace(ns: MountNamespace, bootId: string): number | undefined {
  if (bootId !== currentBootId()) return undefined;
  if (ns.namespace === currentMountNamespace().namespace) return process.pid;
  if (startTimeOf(ns.pid) === ns.startTime && namespaceOf(ns.pid) === ns.namespace) return ns.pid;
  return processesIn(ns.namespace)[0];
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

/** Field 22 of `/proc/<pid>/stat`, read after the command name, which may hold spaces and parentheses. */
export function startTimeOf(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so field 22 is fields[19].
  const value = Number(fields[19]);
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * Where a container's mounts are, as this process sees them: `'here'` (its own
 * namespace; also a record that names none), `'nowhere'` (not mounted, or mounted in a
 * namespace that is gone, or in an earlier boot), or the other namespace, still alive.
 */
export function whereMounted(config: ContainerConfig): 'here' | 'nowhere' | MountNamespace {
  if (!config.mounted) return 'nowhere';
  const boot = config.mountedInBoot ?? currentBootId();
  if (boot !== currentBootId()) return 'nowhere';
  const ns = config.mountedIn;
  if (ns === undefined || ns.namespace === currentMountNamespace().namespace) return 'here';
  return processInNamespace(ns, boot) === undefined ? 'nowhere' : ns;
}

/** The refusal of a change that would have to be made in another mount namespace, where this process cannot act. */
export function mountedElsewhere(config: ContainerConfig, ns: MountNamespace, doing: string): ContainerVolumesError {
  return new ContainerVolumesError(
    'ERR_MOUNTED_IN_OTHER_NAMESPACE',
    `cannot ${doing} container ${config.id}: it is mounted in mount namespace ${ns.namespace} (process ${ns.pid}), not in this process's ${currentMountNamespace().namespace}; do it from a process in that namespace`,
  );
}

import { readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type Options } from 'execa';
import { ContainerVolumesError } from '../errors.js';
import { debugRuntime } from '../debug.js';
import { bindMounterIn } from '../mounter/bind.js';
import type { MountRequest } from '../mounter/mounter.js';
import { processStat } from '../namespaces/process-alive.js';

/** How long a new namespace may take to appear before we give up. */
const START_TIMEOUT_MS = 5000;
/** How long killing may take before we give up on a process that does not die (stuck in the kernel). */
const KILL_TIMEOUT_MS = 5000;

/** Why a command was stopped before it ended on its own. */
export type Stop = 'timeout' | 'abort';

export interface RunLimits {
  signal?: AbortSignal | undefined;
  timeout?: number | undefined;
}

/**
 * The first process of a handler's PID namespace, as the host numbers it. When it dies
 * the kernel kills every other process of the namespace, and it dies only once they
 * are all gone. `startTime` (clock ticks after boot, from /proc/<pid>/stat) tells it
 * from a later process given the same pid.
 */
export interface NamespaceInit {
  pid: number;
  startTime: number;
}

/**
 * A private mount namespace with volumes mounted in it, inside a PID namespace of its
 * own, kept alive by a holder (`unshare --mount --propagation private --pid --fork
 * --kill-child sleep`, whose forked `sleep` is the namespace's init). Mounts made there
 * never reach the host's namespace. Every process of the command, whatever it forks
 * and wherever it goes (a process cannot leave its PID namespace), dies with the init:
 * when the command ends, and also when this process dies first (the holder gets
 * SIGKILL as its parent-death signal, and the init as its own when the holder dies).
 */
export interface PrivateMounts {
  /**
   * Runs `argv` inside the namespaces. When it exits, when `timeout` passes or when
   * `signal` aborts, every process in them is killed: a child the command forked would
   * otherwise outlive it, keep the mounts alive and hold its output pipes open.
   */
  run(argv: readonly string[], options: Options, limits?: RunLimits): ReturnType<typeof execa>;
  /** Why the command was killed, if it was. */
  readonly stopped: Stop | undefined;
  /** Kills every process in the namespaces and waits until they are gone. */
  close(): Promise<void>;
}

/**
 * Makes the namespaces, calls `onStart` with their init before anything is mounted
 * there (a caller records it, so that another process can tell whether the volumes
 * are still in use), then mounts `plan` in them.
 */
export async function privateMounts(plan: readonly MountRequest[], onStart?: (init: NamespaceInit) => Promise<void>): Promise<PrivateMounts> {
  const holder = execa(
    'setpriv',
    ['--pdeathsig', 'KILL', '--', 'unshare', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--', 'sleep', 'infinity'],
    { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', reject: false, env: { LC_ALL: 'C' } },
  );
  let exited = false;
  const done = holder.then((result) => {
    exited = true;
    return result;
  });
  let init: NamespaceInit | undefined;
  let stopped: Stop | undefined;
  const killAll = () => {
    if (init) killInit(init);
  };
  const close = async () => {
    killAll();
    // The holder waits for the init, and the init exits only after every process of its namespace.
    if (init && (await Promise.race([done.then(() => true), sleep(KILL_TIMEOUT_MS, false, { ref: false })]))) return;
    if (init) debugRuntime('the processes of the namespace of %d did not die within %d ms', init.pid, KILL_TIMEOUT_MS);
    holder.kill('SIGKILL');
    await done;
  };
  try {
    const pid = holder.pid;
    if (pid === undefined) throw new Error((await done).message);
    init = await untilPrivate(pid, () => exited, done);
    await onStart?.(init);
    if (plan.length > 0) await bindMounterIn(init.pid).mountAll(plan);
    debugRuntime('private namespaces of %d have %d mounts', init.pid, plan.length);
    const target = `--target=${init.pid}`;
    return {
      run(argv, options, { signal, timeout } = {}) {
        // Two steps: the outer nsenter forks the command into the PID namespace and waits
        // for it from outside; only the inner one, in there, enters the mount namespace.
        const subprocess = execa('setpriv', ['--pdeathsig', 'KILL', '--', 'nsenter', target, '--pid', '--', 'nsenter', target, '--mount', '--', ...argv], options);
        const stop = (why: Stop) => {
          stopped ??= why;
          // The namespace first: the outer nsenter reaps the command as it dies. Killed
          // first, it would leave the command to the host's init to reap, which the
          // namespace's end waits for. It is killed too once the namespace is gone, in case
          // it never got as far as forking into it.
          killAll();
          void done.then(() => subprocess.kill('SIGKILL'));
        };
        const onAbort = () => stop('abort');
        const timer = timeout === undefined ? undefined : setTimeout(() => stop('timeout'), timeout);
        signal?.addEventListener('abort', onAbort, { once: true });
        const ended = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
        };
        subprocess.once('error', ended);
        subprocess.once('exit', () => {
          ended();
          killAll();
        });
        if (signal?.aborted) onAbort();
        return subprocess;
      },
      get stopped() {
        return stopped;
      },
      close,
    };
  } catch (error) {
    await close();
    if (error instanceof ContainerVolumesError) throw error;
    throw new ContainerVolumesError('ERR_HANDLER_FAILED', `cannot make a private mount namespace: ${(error as Error).message}`, { cause: error });
  }
}

/** Whether the init still runs, so that a process of its namespace may: a zombie init has outlived them all. */
export function initAlive(init: NamespaceInit): boolean {
  const stat = processStat(init.pid);
  return stat !== undefined && stat.startTime === init.startTime && stat.state !== 'Z' && stat.state !== 'X';
}

/** SIGKILLs the init, and so its whole namespace, unless its pid now names another process. */
function killInit(init: NamespaceInit): void {
  if (!initAlive(init)) return;
  try {
    process.kill(init.pid, 'SIGKILL');
  } catch {
    // Exited since the look.
  }
}

/**
 * Kills the namespace of `init` and waits until none of its processes is left; false
 * if one did not die in time (stuck in the kernel).
 */
export async function stopNamespace(init: NamespaceInit): Promise<boolean> {
  const deadline = Date.now() + KILL_TIMEOUT_MS;
  while (initAlive(init)) {
    if (Date.now() > deadline) return false;
    killInit(init);
    await sleep(1);
  }
  return true;
}

/**
 * Waits until the holder has forked the init into new namespaces where no mount is
 * `shared`: unshare switches namespaces first and changes propagation after, and a
 * mount made in between could propagate back to the host. The init sets its
 * parent-death signal before it changes propagation, so it is set by then too.
 */
async function untilPrivate(holder: number, exited: () => boolean, done: Promise<{ stderr?: unknown }>): Promise<NamespaceInit> {
  const own = { mnt: readlinkSync('/proc/self/ns/mnt'), pid: readlinkSync('/proc/self/ns/pid') };
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`unshare exited: ${String((await done).stderr ?? '').trim()}`);
    try {
      const [child] = readFileSync(`/proc/${holder}/task/${holder}/children`, 'utf8').split(' ').filter(Boolean);
      const pid = Number(child);
      if (
        Number.isSafeInteger(pid) &&
        pid > 0 &&
        readlinkSync(`/proc/${pid}/ns/pid`) !== own.pid &&
        readlinkSync(`/proc/${pid}/ns/mnt`) !== own.mnt &&
        !/ shared:/.test(readFileSync(`/proc/${pid}/mountinfo`, 'utf8'))
      ) {
        const stat = processStat(pid);
        if (stat) return { pid, startTime: stat.startTime };
      }
    } catch {
      // Before the fork, or between fork and exec, the files may not be readable yet.
    }
    await sleep(1);
  }
  throw new Error(`no private mount namespace after ${START_TIMEOUT_MS} ms`);
}

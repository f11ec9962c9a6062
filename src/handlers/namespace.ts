import { closeSync, fstatSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type Options } from 'execa';
import { ContainerVolumesError } from '../errors.js';
import { debugRuntime } from '../debug.js';
import { bindMounterIn } from '../mounter/bind.js';
import type { MountRequest } from '../mounter/mounter.js';

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
 * A private mount namespace with volumes mounted in it, kept alive by a holder process
 * (`unshare --mount --propagation private sleep`). Mounts made there never reach the
 * host's namespace, and they vanish with the namespace when its processes are killed,
 * also when this process dies first: the holder and the command get SIGKILL as their
 * parent-death signal.
 */
export interface PrivateMounts {
  /**
   * Runs `argv` inside the namespace. When it exits, when `timeout` passes or when
   * `signal` aborts, every process in the namespace is killed: a child the command
   * forked would otherwise outlive it, keep the mounts alive and hold its output pipes
   * open.
   */
  run(argv: readonly string[], options: Options, limits?: RunLimits): ReturnType<typeof execa>;
  /** Why the command was killed, if it was. */
  readonly stopped: Stop | undefined;
  /** Kills every process in the namespace and waits for the holder. */
  close(): Promise<void>;
}

export async function privateMounts(plan: readonly MountRequest[]): Promise<PrivateMounts> {
  const holder = execa(
    'setpriv',
    ['--pdeathsig', 'KILL', '--', 'unshare', '--mount', '--propagation', 'private', '--', 'sleep', 'infinity'],
    { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', reject: false, env: { LC_ALL: 'C' } },
  );
  let exited = false;
  const done = holder.then((result) => {
    exited = true;
    return result;
  });
  // An open descriptor keeps the namespace, and so its inode number, alive: without it a
  // namespace made later could get the same number, and killing by number would hit it.
  let pinned: number | undefined;
  let stopped: Stop | undefined;
  const killAll = async () => {
    if (pinned === undefined) return;
    await killNamespace(`mnt:[${fstatSync(pinned).ino}]`).catch((e: Error) =>
      debugRuntime('killing the processes of the namespace of %d failed: %s', holder.pid, e.message),
    );
  };
  const close = async () => {
    await killAll();
    holder.kill('SIGKILL');
    await done;
    if (pinned !== undefined) closeSync(pinned);
    pinned = undefined;
  };
  try {
    const pid = holder.pid;
    if (pid === undefined) throw new Error((await done).message);
    const ns = await untilPrivate(pid, () => exited, done);
    pinned = openSync(`/proc/${pid}/ns/mnt`, 'r');
    // Had the holder died and its pid been reused in between, we would kill in another namespace.
    if (`mnt:[${fstatSync(pinned).ino}]` !== ns) throw new Error(`the namespace holder ${pid} went away`);
    if (plan.length > 0) await bindMounterIn(pid).mountAll(plan);
    debugRuntime('private mount namespace of %d has %d mounts', pid, plan.length);
    return {
      run(argv, options, { signal, timeout } = {}) {
        const subprocess = execa('setpriv', ['--pdeathsig', 'KILL', '--', 'nsenter', `--target=${pid}`, '--mount', '--', ...argv], options);
        const stop = (why: Stop) => {
          stopped ??= why;
          // Until nsenter has entered the namespace, the command is found only by its pid.
          subprocess.kill('SIGKILL');
          void killAll();
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
          void killAll();
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

/**
 * SIGKILLs every process in the mount namespace `ns` (as /proc/<pid>/ns/mnt reads) until
 * none is left: a process may fork between one scan and the kill.
 */
async function killNamespace(ns: string): Promise<void> {
  const deadline = Date.now() + KILL_TIMEOUT_MS;
  for (;;) {
    const found = processesIn(ns);
    if (found.length === 0) return;
    if (Date.now() > deadline) {
      debugRuntime('processes %o of mount namespace %s did not die', found, ns);
      return;
    }
    for (const pid of found) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Exited since the scan.
      }
    }
    await sleep(1);
  }
}

function processesIn(ns: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    // Only numeric entries are processes; anything else must never reach process.kill.
    if (!/^[1-9][0-9]{0,9}$/.test(name)) continue;
    const pid = Number(name);
    if (!Number.isSafeInteger(pid) || pid === process.pid) continue;
    try {
      if (readlinkSync(`/proc/${pid}/ns/mnt`) === ns) pids.push(pid);
    } catch {
      // Gone, or a zombie: it has left its namespaces already.
    }
  }
  return pids;
}

/**
 * Waits until the holder is in a new namespace whose mounts are all private: unshare
 * switches namespaces first and changes propagation after, and a mount made in between
 * could propagate back to the host. Resolves to the namespace, as /proc/<pid>/ns/mnt reads.
 */
async function untilPrivate(pid: number, exited: () => boolean, done: Promise<{ stderr?: unknown }>): Promise<string> {
  const own = readlinkSync('/proc/self/ns/mnt');
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`unshare exited: ${String((await done).stderr ?? '').trim()}`);
    try {
      const ns = readlinkSync(`/proc/${pid}/ns/mnt`);
      if (ns !== own && !/ shared:/.test(readFileSync(`/proc/${pid}/mountinfo`, 'utf8'))) return ns;
    } catch {
      // Between fork and exec the files may not be readable yet.
    }
    await sleep(1);
  }
  throw new Error(`no private mount namespace after ${START_TIMEOUT_MS} ms`);
}

import { readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type Options } from 'execa';
import { ContainerVolumesError } from '../errors.js';
import { debugRuntime } from '../debug.js';
import { bindMounterIn } from '../mounter/bind.js';
import type { MountRequest } from '../mounter/mounter.js';

/** How long a new namespace may take to appear before we give up. */
const START_TIMEOUT_MS = 5000;

/**
 * A private mount namespace with volumes mounted in it, kept alive by a holder process
 * (`unshare --mount --propagation private sleep`). Mounts made there never reach the
 * host's namespace, and they vanish with the namespace when the holder is killed, also
 * when this process dies first: the holder gets SIGKILL as its parent-death signal.
 */
export interface PrivateMounts {
  /** Runs `argv` inside the namespace. The process is killed if this process dies. */
  run(argv: readonly string[], options: Options): ReturnType<typeof execa>;
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
  const close = async () => {
    holder.kill('SIGKILL');
    await done;
  };
  try {
    const pid = holder.pid;
    if (pid === undefined) throw new Error((await done).message);
    await untilPrivate(pid, () => exited, done);
    if (plan.length > 0) await bindMounterIn(pid).mountAll(plan);
    debugRuntime('private mount namespace of %d has %d mounts', pid, plan.length);
    return {
      run: (argv, options) => execa('setpriv', ['--pdeathsig', 'KILL', '--', 'nsenter', `--target=${pid}`, '--mount', '--', ...argv], options),
      close,
    };
  } catch (error) {
    await close();
    if (error instanceof ContainerVolumesError) throw error;
    throw new ContainerVolumesError('ERR_HANDLER_FAILED', `cannot make a private mount namespace: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Waits until the holder is in a new namespace whose mounts are all private: unshare
 * switches namespaces first and changes propagation after, and a mount made in between
 * could propagate back to the host.
 */
async function untilPrivate(pid: number, exited: () => boolean, done: Promise<{ stderr?: unknown }>): Promise<void> {
  const own = readlinkSync('/proc/self/ns/mnt');
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`unshare exited: ${String((await done).stderr ?? '').trim()}`);
    try {
      if (readlinkSync(`/proc/${pid}/ns/mnt`) !== own && !/ shared:/.test(readFileSync(`/proc/${pid}/mountinfo`, 'utf8'))) return;
    } catch {
      // Between fork and exec the files may not be readable yet.
    }
    await sleep(1);
  }
  throw new Error(`no private mount namespace after ${START_TIMEOUT_MS} ms`);
}

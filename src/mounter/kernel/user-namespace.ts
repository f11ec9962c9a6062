import { closeSync, openSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { ContainerVolumesError } from '../../errors.js';
import { idMapKey, idMapLines } from '../../rules/idmap.js';
import type { IdMap } from '../../types.js';

/** How long the short-lived process may take to enter its new user namespace. */
const START_TIMEOUT_MS = 5000;

/**
 * A user namespace with the given mapping, as a descriptor: what MOUNT_ATTR_IDMAP takes
 * its mapping from. Node cannot unshare one itself (a multi-threaded process cannot), so
 * a short-lived process does (`unshare --user`), this one writes its uid_map and gid_map
 * as root (which needs no `setgroups deny`), opens `/proc/<pid>/ns/user` and kills it:
 * the descriptor keeps the namespace alive, and a mount idmapped with it holds its own
 * reference. The process dies with this one too (a parent-death signal). About 2 ms.
 */
export async function openUserNamespace(map: IdMap, what: string): Promise<number> {
  const holder = execa('setpriv', ['--pdeathsig', 'KILL', '--', 'unshare', '--user', '--', 'sh', '-c', 'echo && exec sleep infinity'], {
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    reject: false,
    env: { LC_ALL: 'C' },
  });
  try {
    // The line comes from inside the new namespace: the maps can be written from then on.
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no user namespace after ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      holder.stdout?.once('data', () => {
        clearTimeout(timer);
        resolve();
      });
      holder.then((result) => {
        clearTimeout(timer);
        reject(new Error(`unshare --user exited: ${result.stderr || result.shortMessage}`));
      }, reject);
    });
    writeFileSync(`/proc/${holder.pid}/uid_map`, idMapLines(map.uidMappings));
    writeFileSync(`/proc/${holder.pid}/gid_map`, idMapLines(map.gidMappings));
    return openSync(`/proc/${holder.pid}/ns/user`, 'r');
  } catch (error) {
    throw new ContainerVolumesError('ERR_MOUNT_FAILED', `${what} failed: cannot make a user namespace with its mapping: ${(error as Error).message}`, { cause: error });
  } finally {
    holder.kill('SIGKILL');
    await holder;
  }
}

/** The user namespaces a call's requests are idmapped with: one per distinct mapping, made before anything is mounted. */
export class UserNamespaces {
  readonly #fds = new Map<string, number>();

  static async open(requests: readonly { idmap?: IdMap }[], what: (i: number) => string): Promise<UserNamespaces> {
    const made = new UserNamespaces();
    try {
      for (const [i, { idmap }] of requests.entries()) {
        const key = idmap && idMapKey(idmap);
        if (key && !made.#fds.has(key)) made.#fds.set(key, await openUserNamespace(idmap as IdMap, what(i)));
      }
    } catch (error) {
      made.close();
      throw error;
    }
    return made;
  }

  /** The namespace descriptor for a request's mapping; undefined for a request without one. */
  of(request: { idmap?: IdMap }): number | undefined {
    return request.idmap && this.#fds.get(idMapKey(request.idmap));
  }

  close(): void {
    for (const fd of this.#fds.values()) closeSync(fd);
    this.#fds.clear();
  }
}

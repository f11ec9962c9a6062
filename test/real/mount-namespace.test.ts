import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { currentMountNamespace, type MountNamespace, processesIn, processInNamespace } from '../../src/namespaces/mount-namespace.js';
import { processStat } from '../../src/namespaces/process-alive.js';
import { currentBootId } from '../../src/store/boot-id.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Finding a process in a recorded mount namespace, through which its mounts are read:
 * the recorded one, any other in it once that one is gone, never a reused pid that is
 * elsewhere. Once the namespace is gone, the kernel may hand its id to a new namespace
 * (another test run's, say): then what is found is a process of that one, never the
 * recorded process.
 */

const children: ChildProcess[] = [];
const boot = currentBootId();

beforeAll(() => assertPrivateMountNamespace());
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

/** A process in a new private mount namespace (and the sleep it runs); resolves once it is in it. */
async function inNewNamespace(command = ['sleep', '1000']): Promise<{ child: ChildProcess; ns: MountNamespace }> {
  const child = spawn('unshare', ['-m', '--propagation', 'private', '--', ...command], { stdio: 'ignore' });
  children.push(child);
  const here = fs.readlinkSync('/proc/self/ns/mnt');
  for (;;) {
    let id: string | undefined;
    try {
      id = fs.readlinkSync(`/proc/${child.pid}/ns/mnt`);
    } catch {
      // not started yet
    }
    if (id !== undefined && id !== here && fs.readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim() !== 'unshare') {
      const pid = child.pid as number;
      return { child, ns: { namespace: id, pid, startTime: (processStat(pid) as { startTime: number }).startTime } };
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

/** No process of the recorded namespace: nothing, or a process of a new namespace given its id. */
function expectGone(ns: MountNamespace): void {
  const found = processInNamespace(ns, boot);
  expect(found).not.toBe(ns.pid);
  if (found !== undefined) expect(fs.readlinkSync(`/proc/${found}/ns/mnt`)).toBe(ns.namespace);
}

describe('mount namespaces', () => {
  test('this process: its own namespace, alive', () => {
    const ns = currentMountNamespace();
    expect(ns.namespace).toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    expect(ns.pid).toBe(process.pid);
    expect(processInNamespace(ns, boot)).toBe(process.pid);
    expect(processesIn(ns.namespace)).toContain(process.pid);
  });

  test('another namespace: its recorded process while it runs, and never again once it exits', async () => {
    const { child, ns } = await inNewNamespace();
    expect(ns.namespace).not.toBe(currentMountNamespace().namespace);
    expect(processInNamespace(ns, boot)).toBe(ns.pid);
    child.kill('SIGKILL');
    await exited(child);
    expectGone(ns);
  });

  test('the recorded process gone, another process in the namespace keeps it alive', async () => {
    // The sh is recorded; the sleep it leaves behind keeps the namespace.
    const { child, ns } = await inNewNamespace(['sh', '-c', 'sleep 1000 & echo $! > /dev/null; exec sleep 1000']);
    const before = processesIn(ns.namespace);
    expect(before.length).toBe(2);
    child.kill('SIGKILL');
    await exited(child);
    const left = processesIn(ns.namespace);
    expect(left.length).toBe(1);
    expect(processInNamespace(ns, boot)).toBe(left[0]);
    const sleeper = left[0] as number;
    process.kill(sleeper, 'SIGKILL');
    while (fs.existsSync(`/proc/${sleeper}/ns`)) await new Promise((resolve) => setTimeout(resolve, 5));
    expectGone(ns);
  });

  test('a reused pid is not taken for the recorded process', async () => {
    const { child, ns } = await inNewNamespace();
    // The same pid in this namespace with another start time: as if the pid were reused here.
    const reused: MountNamespace = { ...ns, startTime: ns.startTime + 1 };
    child.kill('SIGKILL');
    await exited(child);
    expectGone(reused);
    // And a live pid of this namespace recorded against the dead one proves nothing.
    expectGone({ ...ns, pid: process.pid, startTime: currentMountNamespace().startTime });
  });

  test('a namespace of an earlier boot is gone, even if its id is in use now', () => {
    const ns = currentMountNamespace();
    expect(processInNamespace(ns, '00000000-0000-4000-8000-000000000000')).toBeUndefined();
  });
});

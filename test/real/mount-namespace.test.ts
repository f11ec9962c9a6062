import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { currentMountNamespace, isNamespaceAlive, type MountNamespace, processesIn, startTimeOf } from '../../src/mount-namespace.js';
import { currentBootId } from '../../src/store/boot-id.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Telling whether a mount namespace is still alive, so that mounts made in it are
 * respected: by its recorded process, by any other process in it, and never by a pid
 * that was reused by a process elsewhere.
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
      return { child, ns: { namespace: id, pid, startTime: startTimeOf(pid) as number } };
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

describe('mount namespaces', () => {
  test('this process: its own namespace, alive', () => {
    const ns = currentMountNamespace();
    expect(ns.namespace).toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    expect(ns.pid).toBe(process.pid);
    expect(isNamespaceAlive(ns, boot)).toBe(true);
    expect(processesIn(ns.namespace)).toContain(process.pid);
  });

  test('another namespace is alive while its process runs, and gone once it exits', async () => {
    const { child, ns } = await inNewNamespace();
    expect(ns.namespace).not.toBe(currentMountNamespace().namespace);
    expect(isNamespaceAlive(ns, boot)).toBe(true);
    child.kill('SIGKILL');
    await exited(child);
    expect(isNamespaceAlive(ns, boot)).toBe(false);
  });

  test('the recorded process gone, another process in the namespace keeps it alive', async () => {
    // The sh is recorded; the sleep it leaves behind keeps the namespace.
    const { child, ns } = await inNewNamespace(['sh', '-c', 'sleep 1000 & echo $! > /dev/null; exec sleep 1000']);
    const before = processesIn(ns.namespace);
    expect(before.length).toBe(2);
    child.kill('SIGKILL');
    await exited(child);
    expect(isNamespaceAlive(ns, boot)).toBe(true);
    const left = processesIn(ns.namespace);
    expect(left.length).toBe(1);
    for (const pid of left) process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 200 && processesIn(ns.namespace).length > 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(isNamespaceAlive(ns, boot)).toBe(false);
  });

  test('a reused pid is not taken for the recorded process', async () => {
    const { child, ns } = await inNewNamespace();
    // The same pid in this namespace with another start time: as if the pid were reused here.
    const reused: MountNamespace = { ...ns, startTime: ns.startTime + 1 };
    child.kill('SIGKILL');
    await exited(child);
    expect(isNamespaceAlive(reused, boot)).toBe(false);
    // And a live pid of this namespace recorded against the dead one proves nothing.
    expect(isNamespaceAlive({ ...ns, pid: process.pid, startTime: currentMountNamespace().startTime }, boot)).toBe(false);
  });

  test('a namespace of an earlier boot is gone, even if its id is in use now', () => {
    const ns = currentMountNamespace();
    expect(isNamespaceAlive(ns, '00000000-0000-4000-8000-000000000000')).toBe(false);
  });
});

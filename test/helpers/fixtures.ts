import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from '@jest/globals';
import { ContainerRuntime, FakeMounter, type Mounter, type RecoveryReport } from '../../src/index.js';

/** A fresh temporary directory; removed by `cleanupTemp` (call it in afterAll). */
const made: string[] = [];
export async function tempDir(prefix = 'cv-'): Promise<string> {
  const dir = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), prefix)));
  made.push(dir);
  return dir;
}

export async function cleanupTemp(): Promise<void> {
  for (const dir of made.splice(0)) await fs.rm(dir, { recursive: true, force: true });
}

export interface Sandbox {
  dir: string;
  root: string;
  mounter: Mounter;
  runtime: ContainerRuntime;
  /** Makes an empty rootfs directory `<dir>/rootfs/<name>` and returns its path. */
  rootfs(name: string): Promise<string>;
}

/** A store under a new temporary directory, with the fake mounter unless one is given. */
export async function sandbox(mounter: Mounter = new FakeMounter()): Promise<Sandbox> {
  const dir = await tempDir();
  const root = path.join(dir, 'state');
  return {
    dir,
    root,
    mounter,
    runtime: new ContainerRuntime({ root, mounter }),
    async rootfs(name) {
      const rootfs = path.join(dir, 'rootfs', name);
      await fs.mkdir(rootfs, { recursive: true });
      return rootfs;
    },
  };
}

/** Expects `promise` to reject with a ContainerVolumesError of `code`; returns the error for further checks. */
export async function expectCode(promise: Promise<unknown>, code: string): Promise<Error & { code: string }> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(Error);
  expect((caught as { code?: string }).code).toBe(code);
  return caught as Error & { code: string };
}

/**
 * Every path under `dir` with its type, mode, owner, size and (for files and links)
 * content: two snapshots are equal only if nothing on disk changed.
 */
export async function snapshotTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(current: string): Promise<void> {
    let names: string[];
    try {
      names = (await fs.readdir(current)).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const full = path.join(current, name);
      const stat = await fs.lstat(full);
      const rel = path.relative(dir, full);
      const meta = `${(stat.mode & 0o7777).toString(8)} ${stat.uid}:${stat.gid}`;
      if (stat.isSymbolicLink()) out[rel] = `link ${meta} -> ${await fs.readlink(full)}`;
      else if (stat.isDirectory()) {
        out[rel] = `dir ${meta}`;
        await walk(full);
      } else out[rel] = `file ${meta} ${(await fs.readFile(full)).toString('base64')}`;
    }
  }
  await walk(dir);
  return out;
}

/**
 * A store snapshot without the mount-namespace registry: a mount records its namespace
 * before the first mount is made, and the entry stays after a rollback (it is what lets
 * another process find mounts a failed rollback would have left).
 */
export function withoutNamespaceRegistry(tree: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(tree).filter(([name]) => name !== 'namespaces' && !name.startsWith('namespaces/')));
}

/** What `recover()` reports when the host already matched the configurations. */
export const NOTHING_RECOVERED: RecoveryReport = Object.freeze({
  rebooted: [],
  namespaceGone: [],
  attachmentsGone: [],
  removedHandlers: [],
  unmounted: [],
  remounted: [],
  removedVolumes: [],
  removedFiles: [],
  failed: [],
});

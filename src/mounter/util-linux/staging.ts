import { closeSync, mkdirSync, mkdtempSync, readdirSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { debugMount } from '../../debug.js';
import { isAlive } from '../../namespaces/process-alive.js';
import { type MountinfoEntry, readMountinfo } from '../mountinfo.js';
import { OWN_NAMESPACE } from '../target-namespace.js';
import { commandFailed, run } from './commands.js';

/** Where mounts wait before a move: a private mount, so nothing made there propagates. */
export const STAGING = '/run/container-volumes/staging';
let stagingReady: Promise<void> | undefined;

/** Makes STAGING a private mount of its own, once per process. */
export function prepareStaging(): Promise<void> {
  stagingReady ??= (async () => {
    mkdirSync(STAGING, { recursive: true, mode: 0o700 });
    const mounts = await readMountinfo();
    const top = mounts.filter((e) => e.mountPoint === STAGING).pop();
    if (!top || top.propagation.length > 0) {
      const result = await run(OWN_NAMESPACE, ['mount', '--no-canonicalize', '--bind', '--make-private', STAGING, STAGING]);
      if (result.exitCode !== 0) throw commandFailed('ERR_MOUNT_FAILED', `making ${STAGING} a private mount`, result, STAGING);
    }
    await clearStaging(mounts);
  })().catch((error: unknown) => {
    stagingReady = undefined;
    throw error;
  });
  return stagingReady;
}

/**
 * Detaches and removes what processes that died mid-mount left in staging (a directory
 * is named after the process that made it). Staging is root's own directory under
 * /run, so its paths can be given to umount as they are.
 */
export async function clearStaging(mounts: readonly MountinfoEntry[]): Promise<void> {
  const dead = readdirSync(STAGING).filter((name) => !isAlive(Number(name.split('-')[0])));
  if (dead.length === 0) return;
  const dirs = dead.map((name) => path.join(STAGING, name));
  const left = mounts.filter((e) => dirs.some((d) => e.mountPoint === d || e.mountPoint.startsWith(`${d}/`))).reverse();
  if (left.length > 0) await run(OWN_NAMESPACE, ['umount', '--no-canonicalize', '--lazy', ...new Set(left.map((e) => e.mountPoint))]);
  for (const dir of dirs) unstage({ dir });
}

export function stagingDirectory(): string {
  return mkdtempSync(path.join(STAGING, `${process.pid}-`));
}

export function unstage(staged: { dir: string; target?: number }): void {
  if (staged.target !== undefined) closeSync(staged.target);
  try {
    rmdirSync(staged.dir);
  } catch (error) {
    debugMount('staging directory %s stays: %s', staged.dir, (error as Error).message);
  }
}

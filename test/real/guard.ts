import fs from 'node:fs';
import { execa } from 'execa';

/**
 * The real-mount suite makes real mounts as root: it must only ever run inside a
 * private mount namespace (test/run.mjs starts it under `unshare -m` and passes the
 * namespace it started from), so that nothing can leak onto the host even if a test
 * dies half-way.
 */
export function assertPrivateMountNamespace(): void {
  const ours = fs.readlinkSync('/proc/self/ns/mnt');
  const host = process.env.CONTAINER_VOLUMES_HOST_MNT_NS;
  if (process.getuid?.() !== 0 || !host || ours === host) {
    throw new Error('real-mount tests must run as root inside a private mount namespace: run them with `npm test`');
  }
}

/**
 * Fails the suite, loudly, when a runtime it drives is not installed: CI installs each
 * one (.ci/run), and a suite that skipped itself would pass without testing anything.
 */
export async function requireCommand(command: string, args: readonly string[], install: string): Promise<void> {
  try {
    await execa(command, [...args]);
  } catch (error) {
    throw new Error(`${command} is needed for this suite: ${install} (.ci/run installs it)`, { cause: error });
  }
}

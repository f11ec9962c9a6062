// Chooses the mounter for the examples: real bind mounts when we can make them, the
// in-memory fake otherwise. It always says which one it chose.
import fs from 'node:fs';
import { execa } from 'execa';
import { BindMounter, FakeMounter, type Mounter } from 'container-volumes';

export interface PickedMounter {
  mounter: Mounter;
  /** True when mounts are real: files written through one rootfs show in another. */
  real: boolean;
}

/** Given to the re-executed child: the namespace it was started from, so it can check it left it. */
const PARENT_NS = 'CONTAINER_VOLUMES_EXAMPLE_PARENT_MNT_NS';

export async function pickMounter(): Promise<PickedMounter> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) {
    console.log('mounter: FakeMounter (not root on Linux): NOTHING IS REALLY MOUNTED.');
    console.log('  Reads "through a rootfs" are simulated by reading the volume directory in the store;');
    console.log('  read-only modes are only recorded. Run as root for real bind mounts.');
    return { mounter: new FakeMounter(), real: false };
  }
  // In the host's mount namespace a demo that dies half-way would leave bind mounts
  // behind. Run again inside a private one instead: its mounts vanish with it.
  const ours = fs.readlinkSync('/proc/self/ns/mnt');
  const parent = process.env[PARENT_NS];
  if (parent !== undefined) {
    // Checked rather than trusted, and never re-executed twice: no loop if unshare misbehaves.
    if (parent === ours) throw new Error('unshare -m did not give us a private mount namespace');
  } else if (ours === hostNamespace()) {
    console.log('mounter: re-running in a private mount namespace (unshare -m --propagation private)');
    const child = await execa(
      'unshare',
      ['-m', '--propagation', 'private', '--', process.execPath, ...process.execArgv, ...process.argv.slice(1)],
      { stdio: 'inherit', reject: false, env: { [PARENT_NS]: ours } },
    );
    if (child.exitCode === undefined) console.error(`could not run unshare: ${child.message}`);
    process.exit(child.exitCode ?? 1);
  }
  console.log('mounter: BindMounter, real bind mounts (root, private mount namespace)');
  return { mounter: new BindMounter(), real: true };
}

/**
 * The mount namespace of pid 1, the host's. Reading it takes ptrace rights over pid 1,
 * which even root may lack (a sandboxed init): then we cannot tell, and assume we
 * share it, since unsharing once more costs nothing.
 */
function hostNamespace(): string {
  try {
    return fs.readlinkSync('/proc/1/ns/mnt');
  } catch {
    return fs.readlinkSync('/proc/self/ns/mnt');
  }
}

import { readFileSync } from 'node:fs';
import { ContainerVolumesError } from '../errors.js';

/** linux/capability.h: the capability mount(2) and the kernel's mount API check. */
const CAP_SYS_ADMIN = 21;

let privileged = false;

/** Whether this process holds CAP_SYS_ADMIN in its effective set (as root normally does). */
export function hasMountPrivilege(): boolean {
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return match !== null && (BigInt(`0x${match[1]}`) & (1n << BigInt(CAP_SYS_ADMIN))) !== 0n;
}

/**
 * Refuses, before anything is touched, to mount or unmount without the privilege, with
 * an error that says what to do rather than a failed command or EPERM. Checked at the
 * first mount, not when the mounter is made: listing mounts needs no privilege, and a
 * tool that only reads the store (`get`, `ociMounts`) may be given a BindMounter. Once
 * seen, the privilege is taken as kept: a process that drops it later gets the
 * kernel's EPERM in ERR_MOUNT_FAILED.
 */
export function checkMountPrivilege(what: string): void {
  if (privileged || process.platform !== 'linux') return;
  if (hasMountPrivilege()) {
    privileged = true;
    return;
  }
  const who = process.getuid?.() === 0 ? 'this process runs as root but without CAP_SYS_ADMIN' : `this process runs as uid ${process.getuid?.()}`;
  throw new ContainerVolumesError(
    'ERR_MOUNT_PERMISSION_DENIED',
    `${what}: mounting needs root (CAP_SYS_ADMIN in the effective set), and ${who}. Run it as root, ` +
      'or give the runtime a FakeMounter (exported by container-volumes) in tests that need no real mounts',
  );
}

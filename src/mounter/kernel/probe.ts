import { closeSync, openSync } from 'node:fs';
import { isErrnoException } from '../../errors.js';
import { hasMountPrivilege } from '../privilege.js';
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  MOVE_MOUNT_F_EMPTY_PATH,
  MOVE_MOUNT_T_EMPTY_PATH,
  MS_PRIVATE,
  O_CLOEXEC,
  O_DIRECTORY,
  O_PATH,
  OPEN_TREE_CLOEXEC,
  RESOLVE_IN_ROOT,
  RESOLVE_NO_MAGICLINKS,
  STATX_MNT_ID,
} from './constants.js';
import { bindCalls, type KernelCalls, loadKoffi } from './syscalls.js';

/** The kernel's mount API, ready to use, or why it cannot be. */
export type KernelMountApi = { calls: KernelCalls; reason?: undefined } | { calls?: undefined; reason: string };

let probed: KernelMountApi | undefined;

/**
 * Whether the kernel engine can run here, found out once per process: koffi must load
 * (it is optional), on x86-64 or arm64 Linux (the struct layouts used are those of
 * 64-bit little-endian Linux), and the kernel must have openat2, open_tree, move_mount
 * and mount_setattr (Linux 5.12). Each call is tried harmlessly: a missing one fails
 * with ENOSYS, where a present one succeeds or fails for its argument.
 */
export function kernelMountApi(): KernelMountApi {
  probed ??= probe();
  return probed;
}

function probe(): KernelMountApi {
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) {
    return { reason: `the kernel engine runs on Linux x64 and arm64 only, not ${process.platform} ${process.arch}` };
  }
  let calls: KernelCalls;
  try {
    calls = bindCalls(loadKoffi());
  } catch (error) {
    return { reason: `koffi (an optional dependency) could not be loaded: ${(error as Error).message}` };
  }
  try {
    const root = openSync('/', O_PATH | O_DIRECTORY);
    try {
      calls.close(calls.openat2(root, '/', O_PATH | O_DIRECTORY | O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS));
      calls.statx(root, '', AT_EMPTY_PATH, STATX_MNT_ID);
    } finally {
      closeSync(root);
    }
    // Without OPEN_TREE_CLONE, open_tree only opens a path: nothing is copied or mounted.
    calls.close(calls.openTree(AT_FDCWD, '/', OPEN_TREE_CLOEXEC));
    // Both check the privilege first: without it, EPERM says the call exists (the mount
    // itself is then refused with a clear error, as with any engine).
    const unprivileged = !hasMountPrivilege();
    expectBadDescriptor(() => calls.moveMount(-1, '', -1, '', MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH), unprivileged);
    // Asked for nothing, mount_setattr succeeds before it looks at the descriptor.
    expectBadDescriptor(() => calls.mountSetattr(-1, '', AT_EMPTY_PATH, { attrSet: 0, attrClr: 0, propagation: MS_PRIVATE }), unprivileged);
  } catch (error) {
    const missing = isErrnoException(error, 'ENOSYS') ? ' (the kernel has no such call: Linux 5.12 or later is needed)' : '';
    return { reason: `the kernel's mount API is not usable: ${(error as Error).message}${missing}` };
  }
  return { calls };
}

/** A call given a bad descriptor exists when it says EBADF (or EPERM, when allowed); ENOSYS, or anything else, is thrown. */
function expectBadDescriptor(call: () => void, permissionDeniedFirst = false): void {
  try {
    call();
  } catch (error) {
    if (isErrnoException(error, 'EBADF') || (permissionDeniedFirst && isErrnoException(error, 'EPERM'))) return;
    throw error;
  }
  throw new Error('a call with descriptor -1 succeeded');
}

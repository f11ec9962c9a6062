import { execa } from 'execa';
import { ContainerVolumesError, MountCommandError } from '../errors.js';
import { debugMount } from '../debug.js';
import { procPathOf } from '../rootfs/open-in-rootfs.js';
import { findOnPath } from './find-on-path.js';
import { NOTHING_MOUNTED } from './util-linux/commands.js';

/*
 * The one step Node cannot take itself: acting *inside* another mount namespace. The
 * kernel attaches a mount only onto a mount of the caller's namespace, and Node, being
 * multi-threaded, cannot enter another (`setns` refuses). Everything else — the detached
 * copy of the volume, its options, the target directory resolved inside the process's
 * root — is done here in Node and pinned by descriptors, so the helper resolves no path
 * of its own: it is handed `/proc/<our pid>/fd/<n>` links, which name those very
 * objects.
 *
 * The helper is util-linux, single-threaded C: `nsenter --mount=<namespace> --root=/`
 * enters the namespace and keeps *our* root directory (opened before it enters), so the
 * host's `mount` and `umount` run there, whatever the container holds (a busybox rootfs
 * has no perl, no mount, possibly no /proc). `mount --move` of a detached mount is
 * MS_MOVE, which the kernel accepts from a detached tree (unlike MS_BIND, which refuses
 * one: EINVAL).
 */

const TOOLS = ['nsenter', 'mount', 'umount'] as const;
type Tool = (typeof TOOLS)[number];

/** Runs `mount --move` and `umount --lazy` inside the mount namespace a descriptor names. */
export interface NamespaceHelper {
  /** Attaches the detached mount `tree` onto the directory `target` (both descriptors of ours), in namespace `ns`. */
  move(ns: number, tree: number, target: number, what: string): Promise<void>;
  /** Lazily unmounts the mount whose root `fd` is, in namespace `ns`; false when it was not mounted (any more). */
  unmount(ns: number, fd: number, what: string): Promise<boolean>;
}

/**
 * The helper, its tools found on PATH now (an absolute path each, as the namespace's
 * root is ours); ERR_ATTACH_HELPER_MISSING when one is missing.
 */
export function namespaceHelper(): NamespaceHelper {
  const tools = findTools();
  const enter = (ns: number) => [tools.nsenter, `--mount=${procPathOf(ns)}`, '--root=/', '--wd=/', '--'];
  return {
    async move(ns, tree, target, what) {
      const argv = [...enter(ns), tools.mount, '--no-mtab', '--no-canonicalize', '--move', procPathOf(tree), procPathOf(target)];
      const result = await run(argv);
      if (result.exitCode !== 0) throw failed('ERR_MOUNT_FAILED', what, argv, result);
    },
    async unmount(ns, fd, what) {
      const argv = [...enter(ns), tools.umount, '--lazy', '--no-canonicalize', procPathOf(fd)];
      const result = await run(argv);
      if (result.exitCode === 0) return true;
      if (result.exitCode === 32 && NOTHING_MOUNTED.test(result.stderr)) return false;
      throw failed('ERR_UNMOUNT_FAILED', what, argv, result);
    },
  };
}

function findTools(): Record<Tool, string> {
  const found: Partial<Record<Tool, string>> = {};
  for (const tool of TOOLS) {
    const file = findOnPath(tool);
    if (file !== undefined) found[tool] = file;
  }
  const missing = TOOLS.filter((tool) => found[tool] === undefined);
  if (missing.length > 0) {
    throw new ContainerVolumesError(
      'ERR_ATTACH_HELPER_MISSING',
      `attaching volumes to a running process needs util-linux's nsenter, mount and umount on PATH (Debian and Ubuntu: util-linux and mount; Alpine: util-linux-misc and util-linux; RHEL: util-linux-core); not found: ${missing.join(', ')}`,
    );
  }
  return found as Record<Tool, string>;
}

interface Ran {
  exitCode: number | undefined;
  stderr: string;
}

async function run(argv: string[]): Promise<Ran> {
  debugMount('run %o', argv);
  const result = await execa(argv[0] as string, argv.slice(1), { stdin: 'ignore', env: { LC_ALL: 'C' }, reject: false });
  return { exitCode: result.exitCode, stderr: String(result.stderr ?? result.message ?? '') };
}

function failed(code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', what: string, command: string[], result: Ran): MountCommandError {
  return new MountCommandError(code, `${what} failed: ${result.stderr.trim() || `exit code ${result.exitCode ?? 'none'}`}`, {
    command,
    exitCode: result.exitCode,
    stderr: result.stderr,
  });
}

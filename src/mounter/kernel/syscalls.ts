import { createRequire } from 'node:module';
import { getSystemErrorMap } from 'node:util';
import {
  MOUNT_ATTR_SIZE_VER0,
  OPEN_HOW_SIZE,
  STATVFS_FLAG_OFFSET,
  STATVFS_SIZE,
  STATX_OFFSET,
  STATX_SIZE,
  SYS_move_mount,
  SYS_mount_setattr,
  SYS_open_tree,
  SYS_openat2,
  SYS_statx,
} from './constants.js';

/** What `statx` told about a file: enough to tell which mount and which directory it is. */
export interface StatxResult {
  /** The mount the file is on, numbered as in /proc/self/mountinfo (STATX_MNT_ID). */
  mountId: number;
  /** Device and inode: two descriptors with equal ones name the same directory. */
  dev: string;
  ino: bigint;
  /** STATX_ATTR_* bits the kernel set, among those it reports (`attributesMask`). */
  attributes: number;
  attributesMask: number;
}

/** `struct mount_attr` (linux/mount.h). */
export interface MountAttr {
  attrSet: number;
  attrClr: number;
  propagation: number;
  /** The user namespace descriptor MOUNT_ATTR_IDMAP takes its mapping from. */
  usernsFd?: number;
}

/**
 * The system calls the kernel engine makes, through libc. Each throws a
 * `KernelCallError` carrying the errno as Node names it (`code: 'ENOENT'`), so callers
 * test errors exactly as they test Node's own.
 */
export interface KernelCalls {
  openat2(dirfd: number, path: string, flags: number, resolve: number): number;
  openTree(dirfd: number, path: string, flags: number): number;
  moveMount(fromDirfd: number, fromPath: string, toDirfd: number, toPath: string, flags: number): void;
  mountSetattr(dirfd: number, path: string, flags: number, attr: MountAttr): void;
  /** On a worker thread: see `bindCalls`. */
  umount2(target: string, flags: number): Promise<void>;
  mkdirat(dirfd: number, path: string, mode: number): void;
  statx(dirfd: number, path: string, flags: number, mask: number): StatxResult;
  /** `f_flag` of fstatvfs: the ST_* flags of the mount the descriptor is on. */
  mountFlags(fd: number): number;
  close(fd: number): void;
}

/** A failed system call, shaped like Node's own system errors (`code`, `errno`, `syscall`, `path`). */
export class KernelCallError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string | undefined;

  constructor(syscall: string, errno: number, path?: string) {
    const [code, description] = getSystemErrorMap().get(-errno) ?? [`E${errno}`, `errno ${errno}`];
    super(`${code}: ${description}, ${syscall}${path === undefined ? '' : ` '${path}'`}`);
    this.name = 'KernelCallError';
    this.code = code;
    this.errno = -errno;
    this.syscall = syscall;
    this.path = path;
  }
}

/** The parts of koffi used here (its own typings are loose: functions return `any`). */
interface Koffi {
  load(path: string): { func(prototype: string): KoffiFunction };
  errno(): number;
}
type KoffiFunction = ((...args: unknown[]) => number) & { async(...args: unknown[]): void };

/**
 * Loads koffi. It is an optional dependency: an install without it (`--omit=optional`)
 * or a platform without its prebuilt binary must still work, on the util-linux engine,
 * so it is required at run time, never imported.
 */
export function loadKoffi(): Koffi {
  return createRequire(import.meta.url)('koffi') as Koffi;
}

/** glibc's name, then musl's (x86-64 and arm64 are the architectures koffi ships for). */
const LIBC_NAMES = ['libc.so.6', 'libc.musl-x86_64.so.1', 'libc.musl-aarch64.so.1'];

/** Binds the calls through libc; throws when koffi or a function cannot be found. */
export function bindCalls(koffi: Koffi): KernelCalls {
  const libc = loadLibc(koffi);
  const statxNumber = SYS_statx[process.arch];
  if (statxNumber === undefined) throw new Error(`no statx system call number known for ${process.arch}`);
  // The calls without a libc wrapper everywhere (openat2 has none in glibc 2.36) go
  // through syscall(2), declared variadic as it is in C so that every argument is
  // passed as the ABI requires.
  const syscall = libc.func('long syscall(long number, ...)');
  const umount2 = libc.func('int umount2(const char *target, int flags)');
  const mkdirat = libc.func('int mkdirat(int dirfd, const char *path, uint32_t mode)');
  const fstatvfs = libc.func('int fstatvfs(int fd, void *buf)');
  const close = libc.func('int close(int fd)');

  const check = (result: number, name: string, path?: string): number => {
    if (result < 0) throw new KernelCallError(name, koffi.errno(), path);
    return result;
  };
  const openHow = Buffer.alloc(OPEN_HOW_SIZE);
  const mountAttr = Buffer.alloc(MOUNT_ATTR_SIZE_VER0);
  const statxBuffer = Buffer.alloc(STATX_SIZE);
  const statvfsBuffer = Buffer.alloc(STATVFS_SIZE);

  return {
    openat2(dirfd, path, flags, resolve) {
      openHow.writeBigUInt64LE(BigInt(flags), 0);
      openHow.writeBigUInt64LE(0n, 8);
      openHow.writeBigUInt64LE(BigInt(resolve), 16);
      return check(syscall(SYS_openat2, 'int', dirfd, 'const char *', path, 'void *', openHow, 'size_t', OPEN_HOW_SIZE), 'openat2', path);
    },
    openTree(dirfd, path, flags) {
      return check(syscall(SYS_open_tree, 'int', dirfd, 'const char *', path, 'unsigned int', flags), 'open_tree', path);
    },
    moveMount(fromDirfd, fromPath, toDirfd, toPath, flags) {
      check(
        syscall(SYS_move_mount, 'int', fromDirfd, 'const char *', fromPath, 'int', toDirfd, 'const char *', toPath, 'unsigned int', flags),
        'move_mount',
      );
    },
    mountSetattr(dirfd, path, flags, attr) {
      mountAttr.writeBigUInt64LE(BigInt(attr.attrSet), 0);
      mountAttr.writeBigUInt64LE(BigInt(attr.attrClr), 8);
      mountAttr.writeBigUInt64LE(BigInt(attr.propagation), 16);
      mountAttr.writeBigUInt64LE(BigInt(attr.usernsFd ?? 0), 24);
      check(
        syscall(SYS_mount_setattr, 'int', dirfd, 'const char *', path, 'unsigned int', flags, 'void *', mountAttr, 'size_t', MOUNT_ATTR_SIZE_VER0),
        'mount_setattr',
        path || undefined,
      );
    },
    // Unmounting can block for as long as a dead network file system takes to answer;
    // on the event loop that would freeze the whole embedding process, so it runs on
    // koffi's worker threads (koffi hands the worker's errno back with the result).
    umount2(target, flags) {
      return new Promise((resolve, reject) => {
        umount2.async(target, flags, (error: unknown, result: number) => {
          if (error) reject(error);
          else if (result < 0) reject(new KernelCallError('umount2', koffi.errno(), target));
          else resolve();
        });
      });
    },
    mkdirat(dirfd, path, mode) {
      check(mkdirat(dirfd, path, mode), 'mkdirat', path);
    },
    statx(dirfd, path, flags, mask) {
      check(syscall(statxNumber, 'int', dirfd, 'const char *', path, 'int', flags, 'unsigned int', mask, 'void *', statxBuffer), 'statx', path || undefined);
      return {
        mountId: Number(statxBuffer.readBigUInt64LE(STATX_OFFSET.mountId)),
        dev: `${statxBuffer.readUInt32LE(STATX_OFFSET.devMajor)}:${statxBuffer.readUInt32LE(STATX_OFFSET.devMinor)}`,
        ino: statxBuffer.readBigUInt64LE(STATX_OFFSET.ino),
        attributes: Number(statxBuffer.readBigUInt64LE(STATX_OFFSET.attributes)),
        attributesMask: Number(statxBuffer.readBigUInt64LE(STATX_OFFSET.attributesMask)),
      };
    },
    mountFlags(fd) {
      check(fstatvfs(fd, statvfsBuffer), 'fstatvfs');
      return Number(statvfsBuffer.readBigUInt64LE(STATVFS_FLAG_OFFSET));
    },
    close(fd) {
      check(close(fd), 'close');
    },
  };
}

function loadLibc(koffi: Koffi): ReturnType<Koffi['load']> {
  const failures: string[] = [];
  for (const name of LIBC_NAMES) {
    try {
      return koffi.load(name);
    } catch (error) {
      failures.push(`${name}: ${(error as Error).message}`);
    }
  }
  throw new Error(`no C library found (${failures.join('; ')})`);
}

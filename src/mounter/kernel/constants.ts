import { constants as fsConstants } from 'node:fs';

/*
 * The kernel's numbers for its mount API, each from the header that defines it. The
 * values are the same on x86-64 and arm64 except where noted (the only architectures
 * the kernel engine runs on, see `probe.ts`). O_DIRECTORY and O_NOFOLLOW do differ
 * between them, so they come from Node, which was built against the platform's headers.
 */

/** System call numbers. asm-generic/unistd.h: from 424 on, one table for every architecture. */
export const SYS_open_tree = 428;
export const SYS_move_mount = 429;
export const SYS_openat2 = 437;
export const SYS_mount_setattr = 442;
/** statx predates the shared table: asm/unistd_64.h on x86-64, asm-generic/unistd.h on arm64. */
export const SYS_statx: Partial<Record<NodeJS.Architecture, number>> = { x64: 332, arm64: 291 };

/** asm-generic/fcntl.h (arm64 keeps these two from it). */
export const O_PATH = 0o10000000;
export const O_CLOEXEC = 0o2000000;
export const O_DIRECTORY = fsConstants.O_DIRECTORY;
export const O_NOFOLLOW = fsConstants.O_NOFOLLOW;

/** linux/fcntl.h */
export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_EMPTY_PATH = 0x1000;

/** linux/openat2.h: `struct open_how { __u64 flags, mode, resolve; }`. */
export const OPEN_HOW_SIZE = 24;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;
export const RESOLVE_IN_ROOT = 0x10;

/** linux/mount.h */
export const OPEN_TREE_CLONE = 1;
export const OPEN_TREE_CLOEXEC = O_CLOEXEC;
export const MOVE_MOUNT_F_EMPTY_PATH = 0x04;
export const MOVE_MOUNT_T_EMPTY_PATH = 0x40;
export const MOUNT_ATTR_RDONLY = 0x1;
export const MOUNT_ATTR_NOSUID = 0x2;
export const MOUNT_ATTR_NODEV = 0x4;
export const MOUNT_ATTR_NOEXEC = 0x8;
/** The atime setting is the field MOUNT_ATTR__ATIME masks; relatime is its value 0. */
export const MOUNT_ATTR__ATIME = 0x70;
export const MOUNT_ATTR_RELATIME = 0;
export const MOUNT_ATTR_NODIRATIME = 0x80;
export const MOUNT_ATTR_NOSYMFOLLOW = 0x200000;
/** Idmaps the mount with the user namespace `userns_fd` names (set on a detached mount only). */
export const MOUNT_ATTR_IDMAP = 0x100000;
/** `struct mount_attr { __u64 attr_set, attr_clr, propagation, userns_fd; }`. */
export const MOUNT_ATTR_SIZE_VER0 = 32;
export const MS_PRIVATE = 1 << 18;

/** sys/mount.h (the kernel's own copy is in linux/fs.h, outside its uapi). */
export const MNT_DETACH = 2;
export const UMOUNT_NOFOLLOW = 8;

/** linux/stat.h */
export const STATX_INO = 0x100;
export const STATX_MNT_ID = 0x1000;
export const STATX_ATTR_MOUNT_ROOT = 0x2000;
/**
 * Byte offsets in `struct statx` (256 bytes), linux/stat.h: __u32 stx_mask @0,
 * __u64 stx_attributes @8, __u64 stx_ino @32, __u64 stx_attributes_mask @56,
 * __u32 stx_dev_major @136, __u32 stx_dev_minor @140, __u64 stx_mnt_id @144.
 */
export const STATX_SIZE = 256;
export const STATX_OFFSET = { mask: 0, attributes: 8, ino: 32, attributesMask: 56, devMajor: 136, devMinor: 140, mountId: 144 } as const;

/**
 * sys/statvfs.h: the per-mount flags in `f_flag`, which sits at byte 72 of the 112-byte
 * `struct statvfs` of glibc and musl on 64-bit Linux (eight 8-byte counters, f_fsid, then f_flag).
 */
export const ST_RDONLY = 1;
export const ST_NOSUID = 2;
export const ST_NODEV = 4;
export const STATVFS_SIZE = 112;
export const STATVFS_FLAG_OFFSET = 72;

/**
 * Every error the library throws is a ContainerVolumesError with a stable `code`.
 * Codes are part of the public contract (docs/errors.md); messages are not.
 */
export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_INVALID_ID'
  | 'ERR_INVALID_ROOTFS'
  | 'ERR_INVALID_VOLUME_PATH'
  | 'ERR_INVALID_MODE'
  | 'ERR_CONTAINER_NOT_FOUND'
  | 'ERR_VOLUME_NOT_FOUND'
  | 'ERR_AMBIGUOUS_ID'
  | 'ERR_DUPLICATE_MOUNT_POINT'
  | 'ERR_SHARE_FROM_SELF'
  | 'ERR_MOUNT_POINT_NOT_DIRECTORY'
  | 'ERR_PATH_ESCAPES_ROOTFS'
  | 'ERR_MOUNT_POINT_IN_USE'
  | 'ERR_MOUNT_POINT_READ_ONLY'
  | 'ERR_CONTAINER_MOUNTED'
  | 'ERR_MOUNTED_IN_OTHER_NAMESPACE'
  | 'ERR_CONTAINER_ATTACHED'
  | 'ERR_PROCESS_NOT_FOUND'
  | 'ERR_PROCESS_CHANGED'
  | 'ERR_ATTACH_OWN_NAMESPACE'
  | 'ERR_ATTACH_UNSUPPORTED'
  | 'ERR_ATTACH_HELPER_MISSING'
  | 'ERR_VOLUME_IN_USE'
  | 'ERR_VOLUME_BUSY'
  | 'ERR_COPY_UP_FAILED'
  | 'ERR_MOUNT_FAILED'
  | 'ERR_UNMOUNT_FAILED'
  | 'ERR_MOUNT_ENGINE_UNAVAILABLE'
  | 'ERR_IDMAP_UNSUPPORTED'
  | 'ERR_MOUNT_PERMISSION_DENIED'
  | 'ERR_CORRUPT_CONFIG'
  | 'ERR_STORE_UNAVAILABLE'
  | 'ERR_LOCK_FAILED'
  | 'ERR_HANDLER_FAILED'
  | 'ERR_HANDLER_ABORTED'
  | 'ERR_HANDLER_TIMED_OUT'
  | 'ERR_HANDLER_RUNNING'
  | 'ERR_INVALID_ARCHIVE';

/** The error every method throws on purpose: branch on its `code`, listed in docs/errors.md. */
export class ContainerVolumesError extends Error {
  /** Stable, part of the contract (the message is for people and may change). */
  readonly code: ErrorCode;

  /** An error with a stable `code` and a message naming the container, volume or path concerned. */
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ContainerVolumesError';
    this.code = code;
  }
}

/** A `mount`/`umount` process that failed: carries the command line and what it said. */
export class MountCommandError extends ContainerVolumesError {
  /** The command line run, as an argument array. */
  readonly command: readonly string[];
  /** Its exit code; undefined when it did not exit (killed, or not started). */
  readonly exitCode: number | undefined;
  /** What it wrote on stderr. */
  readonly stderr: string;

  /** A failed `mount` or `umount` run, with its command line, exit code and stderr (`details`). */
  constructor(
    code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED',
    message: string,
    details: { command: readonly string[]; exitCode: number | undefined; stderr: string },
    options?: { cause?: unknown },
  ) {
    super(
      code,
      `${message}\n  command: ${details.command.join(' ')}\n  exit code: ${details.exitCode ?? 'none'}\n  output: ${details.stderr.trim()}`,
      options,
    );
    this.name = 'MountCommandError';
    this.command = details.command;
    this.exitCode = details.exitCode;
    this.stderr = details.stderr;
  }
}

/** Duck-typed rather than `instanceof Error`: system errors may come from another realm (vm contexts, jest). */
export function isErrnoException(error: unknown, code: string): error is NodeJS.ErrnoException {
  return typeof error === 'object' && error !== null && (error as NodeJS.ErrnoException).code === code;
}

/** How a bad value is shown in a message: strings quoted (so NUL and newlines show), others by type. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? JSON.stringify(value) : typeof value;
}

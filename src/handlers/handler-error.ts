import { ContainerVolumesError } from '../errors.js';

/** A handler whose command failed: a non-zero exit, a signal, a time-out or an abort. */
export class HandlerError extends ContainerVolumesError {
  /**
   * The command's exit code when it exited non-zero by itself (`127`: no such program in
   * the rootfs; for `backup`, `restore` and `sync`, tar's or rsync's own code). Undefined
   * when it did not: killed by a signal, timed out, aborted, its stream failed, its
   * output went over the limit, or no command ran.
   */
  readonly exitCode: number | undefined;
  /**
   * What the command wrote to standard error before it ended, as collected (up to 64 MiB);
   * empty when it was streamed to the caller's `stderr` or no command ran.
   */
  readonly stderr: string;

  /**
   * Made by the library when a command handler, or the tar or rsync behind `backup`,
   * `restore` and `sync`, fails, times out or is aborted, and when a function handler is
   * aborted; exported so that callers can test `instanceof`.
   *
   * @param code ERR_HANDLER_FAILED (the command or a stream failed), ERR_HANDLER_ABORTED (the caller's signal) or ERR_HANDLER_TIMED_OUT (the command handler's `timeout`).
   * @param message Names the command and the container whose volumes it worked on.
   * @param details The exit code and collected standard error, when there are any.
   * @param options `cause`: the error behind this one (the signal's reason on an abort).
   */
  constructor(
    code: 'ERR_HANDLER_FAILED' | 'ERR_HANDLER_ABORTED' | 'ERR_HANDLER_TIMED_OUT',
    message: string,
    details: { exitCode?: number; stderr?: string } = {},
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.name = 'HandlerError';
    this.exitCode = details.exitCode;
    this.stderr = details.stderr ?? '';
  }
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new HandlerError('ERR_HANDLER_ABORTED', 'the handler was aborted before it started', {}, { cause: signal.reason });
}

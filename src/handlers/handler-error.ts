import { ContainerVolumesError } from '../errors.js';

/** A handler whose command failed: a non-zero exit, a signal, a time-out or an abort. */
export class HandlerError extends ContainerVolumesError {
  readonly exitCode: number | undefined;
  readonly stderr: string;

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

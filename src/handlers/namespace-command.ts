import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { MountRequest } from '../mounter/mounter.js';
import { HandlerError } from './handler-error.js';
import { type NamespaceInit, privateMounts } from './namespace.js';

/** The most output of a command collected into its result, per stream. */
export const MAX_COLLECTED = 64 * 1024 * 1024;

/** A command to run in a private mount namespace where `plan` is mounted. */
export interface NamespaceCommand {
  /** How messages name it: the command and the container whose volumes it works on. */
  what: string;
  argv: readonly string[];
  plan: readonly MountRequest[];
  /** Called with the init of the namespaces before anything is mounted there. */
  onStart?: ((init: NamespaceInit) => Promise<void>) | undefined;
  signal?: AbortSignal | undefined;
  /** Milliseconds before the command is killed (ERR_HANDLER_TIMED_OUT). */
  timeout?: number | undefined;
  /** Fed to the command's standard input; without it, stdin is empty. */
  stdin?: Readable | undefined;
  /** Where the command's output goes as it comes, left open; without them, it is collected. */
  stdout?: Writable | undefined;
  stderr?: Writable | undefined;
  /** Called with each chunk fed to stdin or, without stdin, written to stdout. */
  onChunk?: ((chunk: Buffer) => void) | undefined;
  /**
   * Exit codes that are not failures. A command that reads live volumes (tar, rsync)
   * says with one that a file changed or vanished while it read it: the copy is then
   * not a snapshot, which is no failure.
   */
  toleratedExitCodes?: readonly number[];
  /** Added to this process's environment: the library's own tools run with LC_ALL=C, so that their messages can be parsed. */
  env?: Record<string, string>;
}

export interface NamespaceResult {
  exitCode: number;
  /** What the command wrote, unless a stream was given for it. */
  stdout: string;
  stderr: string;
}

/**
 * Runs a command in a private mount namespace (see namespace.ts) and turns the way it
 * ended into a HandlerError: aborted, timed out, a failed stream, too much output, a
 * non-zero exit or a signal. Nothing of the namespace is left when it settles.
 */
export async function runInNamespace(command: NamespaceCommand): Promise<NamespaceResult> {
  const { what, signal } = command;
  const mounts = await privateMounts(command.plan, command.onStart);
  try {
    const subprocess = mounts.run(
      command.argv,
      {
        reject: false,
        stdin: command.stdin ? 'pipe' : 'ignore',
        buffer: { stdout: !command.stdout, stderr: !command.stderr },
        // Capped: a command that should be streamed must not fill this process's memory.
        maxBuffer: MAX_COLLECTED,
        ...(command.env ? { env: command.env } : {}),
      },
      { signal, timeout: command.timeout },
    );
    const streams: Promise<unknown>[] = [];
    if (command.stdin) streams.push(pipeline(command.stdin, counter(command.onChunk), subprocess.stdin as Writable));
    const countOut = command.stdin ? undefined : command.onChunk;
    if (command.stdout) streams.push(pipeline(subprocess.stdout as Readable, counter(countOut), command.stdout, { end: false }));
    if (command.stderr) streams.push(pipeline(subprocess.stderr as Readable, command.stderr, { end: false }));
    const streaming = Promise.all(streams).then(() => undefined, (e: NodeJS.ErrnoException) => e);
    const [result, streamError] = await Promise.all([subprocess, streaming]);
    const stderr = typeof result.stderr === 'string' ? result.stderr : '';
    if (mounts.stopped === 'abort') throw new HandlerError('ERR_HANDLER_ABORTED', `${what} was aborted`, { stderr }, { cause: signal?.reason });
    if (mounts.stopped === 'timeout') throw new HandlerError('ERR_HANDLER_TIMED_OUT', `${what} timed out after ${command.timeout} ms`, { stderr });
    // A command may stop reading its input before the end (tar stops at the end of the
    // archive, before any padding): the broken pipe into it is no failure, its exit status tells.
    const stoppedReading = command.stdin !== undefined && BROKEN_PIPE.has(streamError?.code ?? '');
    // Before the exit status: the command fails too when our end fails (ENOSPC), and only says "broken pipe".
    if (streamError && !stoppedReading) {
      throw new HandlerError('ERR_HANDLER_FAILED', `${what}: its stream failed: ${streamError.message}`, { stderr }, { cause: streamError });
    }
    if (result.isMaxBuffer) {
      throw new HandlerError('ERR_HANDLER_FAILED', `${what} wrote more than the ${MAX_COLLECTED / 1024 / 1024} MiB of output that are collected: pass stdout and stderr streams instead`, {
        stderr,
      });
    }
    if (result.exitCode !== 0 && !(result.exitCode !== undefined && command.toleratedExitCodes?.includes(result.exitCode))) {
      const why = result.exitCode === undefined ? `was killed by ${result.signal ?? 'a signal'}` : `exited with code ${result.exitCode}`;
      throw new HandlerError('ERR_HANDLER_FAILED', `${what} ${why}${stderr ? `: ${stderr.slice(-500)}` : ''}`, {
        ...(result.exitCode === undefined ? {} : { exitCode: result.exitCode }),
        stderr,
      });
    }
    return { exitCode: result.exitCode, stdout: typeof result.stdout === 'string' ? result.stdout : '', stderr };
  } finally {
    await mounts.close();
  }
}

/** How writing into a subprocess that has closed its stdin fails. */
const BROKEN_PIPE = new Set(['EPIPE', 'ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']);

function counter(onChunk: ((chunk: Buffer) => void) | undefined): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      onChunk?.(chunk);
      callback(null, chunk);
    },
  });
}

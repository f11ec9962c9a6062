import type { Readable, Writable } from 'node:stream';
import type { Context } from '../context.js';
import { optionsObject } from '../rules/options.js';
import { ContainerVolumesError, describe } from '../errors.js';
import { placeMounts } from '../plan/mount-plan.js';
import { checkReference } from '../rules/ids.js';
import { checkMode } from '../rules/volumes-from.js';
import { type ContainerConfig, toContainerInfo } from '../store/container-config.js';
import type { ContainerInfo, Mode } from '../types.js';
import { type HandlerVolume, recordHandlerNamespace, withHandlerContainer } from './handler-container.js';
import { HandlerError } from './handler-error.js';
import { runInNamespace } from './namespace-command.js';

/** setTimeout's limit (about 24.8 days): a longer delay fires at once. */
const MAX_TIMEOUT = 2 ** 31 - 1;

/** What a function handler is called with: the handler container, the volumes it shares, and the caller's signal. */
export interface HandlerContext {
  /** The transient handler container that shares the target's volumes while the handler runs. */
  container: ContainerInfo;
  /**
   * One entry per volume of the target, parents first, those it shares from other
   * containers included: its container path, id, mode in the handler container (the
   * target's, or `'ro'` for every one with `mode: 'ro'`), origin `{ from: <target id> }`,
   * and the host directory holding its data. Nested volumes are separate entries: a parent's
   * directory holds only an empty mount point where a child sits.
   */
  volumes: HandlerVolume[];
  /** Aborted when the caller's signal is: long-running handlers should stop then. */
  signal: AbortSignal;
}

/**
 * A function handler: runs in this process, with this process's privileges, while the
 * handler container protects the volumes. What it returns (or resolves to) is what
 * `runHandler` resolves to; what it throws is what `runHandler` rejects with, unwrapped.
 * It is not stopped by an abort: it should honour `context.signal`, since once
 * `runHandler` has rejected the volumes are no longer protected from it.
 */
export type HandlerFunction<T> = (context: HandlerContext) => T | Promise<T>;

/** Options of a function handler, and the ones a command handler shares. Unknown keys are refused (ERR_INVALID_ARGUMENT). */
export interface HandlerOptions {
  /** `'ro'` shares every volume read-only; by default each keeps the target's mode. */
  mode?: Mode;
  /** Aborting rejects with ERR_HANDLER_ABORTED and removes the handler container at once. */
  signal?: AbortSignal;
}

/**
 * A command handler: a program run chrooted into `rootfs`, in a private mount namespace
 * where the target's volumes are mounted at their container paths; nothing of it stays
 * mounted, and none of its processes survives, once the call settles. It carries its
 * options itself: an options argument next to it is refused (ERR_INVALID_ARGUMENT).
 */
export interface CommandHandler extends HandlerOptions {
  /** The program and its arguments, run inside `rootfs` (chroot) with the volumes at their container paths. */
  command: string[];
  /** The handler's root filesystem: must hold the program and what it needs (see docs/handlers.md). */
  rootfs: string;
  /** Milliseconds before the command is killed (ERR_HANDLER_TIMED_OUT). */
  timeout?: number;
  /** Fed to the command's standard input; without it, stdin is empty. */
  stdin?: Readable;
  /** Where the command's output goes as it comes; without it, it is collected into the result. */
  stdout?: Writable;
  /**
   * Where the command's standard error goes as it comes; the stream is left open. Without
   * it, standard error is collected (up to 64 MiB) into the result and into a
   * HandlerError's `stderr`; with it, both are empty.
   */
  stderr?: Writable;
}

/** What a command handler resolves to, once its command exited successfully. */
export interface CommandResult {
  /** Always 0: any other exit, or a signal, rejects with a HandlerError (ERR_HANDLER_FAILED) instead. */
  exitCode: number;
  /** What the command wrote, unless `stdout` / `stderr` streams were given. */
  stdout: string;
  /** What the command wrote to standard error, up to 64 MiB (more fails the call); empty when a `stderr` stream was given. */
  stderr: string;
}

export async function runHandler(ctx: Context, containerId: string, handler: unknown, options: unknown): Promise<unknown> {
  checkReference(containerId, 'container');
  if (typeof handler === 'function') {
    const { mode, signal } = handlerOptions(options, ['mode', 'signal']);
    return withHandlerContainer(ctx, containerId, mode, undefined, signal, (container, volumes) =>
      untilAborted(Promise.resolve().then(() => handler({ container: toContainerInfo(container), volumes, signal: signal ?? new AbortController().signal })), signal),
    );
  }
  if (typeof handler === 'object' && handler !== null && options === undefined) {
    const spec = commandHandler(handler);
    return withHandlerContainer(ctx, containerId, spec.mode, spec.rootfs, spec.signal, (container) => runCommand(ctx, container, containerId, spec));
  }
  throw new ContainerVolumesError(
    'ERR_INVALID_ARGUMENT',
    `a handler must be a function (with options) or a { command, rootfs } object, got ${describe(handler)}`,
  );
}

function handlerOptions(options: unknown, allowed: readonly (keyof HandlerOptions)[]): HandlerOptions {
  const given = optionsObject<HandlerOptions>(options, 'handler options', allowed);
  const mode = checkMode(given.mode, 'the handler');
  if (given.signal !== undefined && !(given.signal instanceof AbortSignal)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `handler option signal must be an AbortSignal, got ${describe(given.signal)}`);
  }
  return { ...(mode ? { mode } : {}), ...(given.signal ? { signal: given.signal } : {}) };
}

function commandHandler(given: object): CommandHandler {
  const keys = ['command', 'rootfs', 'mode', 'signal', 'timeout', 'stdin', 'stdout', 'stderr'] as const;
  const spec = optionsObject<CommandHandler>(given, 'the command handler', keys);
  const { command, rootfs, timeout } = spec;
  if (!Array.isArray(command) || command.length === 0 || command.some((a) => typeof a !== 'string' || a.includes('\0'))) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `command must be a non-empty array of strings without NUL, got ${describe(command)}`);
  }
  if (typeof rootfs !== 'string' || !rootfs.startsWith('/')) {
    throw new ContainerVolumesError('ERR_INVALID_ROOTFS', `a command handler needs an absolute rootfs holding its program, got ${describe(rootfs)}`);
  }
  if (timeout !== undefined && !(Number.isSafeInteger(timeout) && timeout > 0 && timeout <= MAX_TIMEOUT)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `timeout must be a whole number of milliseconds from 1 to ${MAX_TIMEOUT}, got ${describe(timeout)}`);
  }
  for (const name of ['stdin', 'stdout', 'stderr'] as const) {
    const stream = spec[name];
    if (stream !== undefined && (typeof stream !== 'object' || stream === null || typeof (stream as { on?: unknown }).on !== 'function')) {
      throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${name} must be a stream, got ${describe(stream)}`);
    }
  }
  const { mode, signal } = handlerOptions({ mode: spec.mode, signal: spec.signal }, ['mode', 'signal']);
  return { ...spec, command, rootfs, mode, signal } as CommandHandler;
}

async function runCommand(ctx: Context, container: ContainerConfig, targetId: string, spec: CommandHandler): Promise<CommandResult> {
  return runInNamespace({
    what: `handler command ${JSON.stringify(spec.command)} on the volumes of container ${targetId}`,
    argv: ['chroot', container.rootfs, ...spec.command],
    plan: placeMounts(container, (id) => ctx.store.volumeDir(id)),
    onStart: (init) => recordHandlerNamespace(ctx, container.id, init),
    signal: spec.signal,
    timeout: spec.timeout,
    stdin: spec.stdin,
    stdout: spec.stdout,
    stderr: spec.stderr,
  });
}

/** Settles with `work`, or rejects with ERR_HANDLER_ABORTED as soon as `signal` aborts. */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new HandlerError('ERR_HANDLER_ABORTED', 'the handler was aborted', {}, { cause: signal.reason }));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

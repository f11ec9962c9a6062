import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { Context } from '../context.js';
import { optionsObject } from '../context.js';
import { createContainer } from '../containers.js';
import { debugRuntime } from '../debug.js';
import { ContainerVolumesError, describe } from '../errors.js';
import { placeMounts } from '../mount-plan.js';
import { checkReference } from '../rules/ids.js';
import { checkMode } from '../rules/volumes-from.js';
import { currentBootId } from '../store/boot-id.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { ContainerInfo, Mode, VolumeMount } from '../types.js';
import { type NamespaceInit, privateMounts } from './namespace.js';

/** The most output of a command handler collected into its result, per stream. */
const MAX_COLLECTED = 64 * 1024 * 1024;
/** setTimeout's limit (about 24.8 days): a longer delay fires at once. */
const MAX_TIMEOUT = 2 ** 31 - 1;

/** A volume as a handler sees it: the mount, plus where its data is on the host. */
export interface HandlerVolume extends VolumeMount {
  hostPath: string;
}

export interface HandlerContext {
  /** The transient handler container that shares the target's volumes while the handler runs. */
  container: ContainerInfo;
  volumes: HandlerVolume[];
  /** Aborted when the caller's signal is: long-running handlers should stop then. */
  signal: AbortSignal;
}

export type HandlerFunction<T> = (context: HandlerContext) => T | Promise<T>;

export interface HandlerOptions {
  /** `'ro'` shares every volume read-only; by default each keeps the target's mode. */
  mode?: Mode;
  /** Aborting rejects with ERR_HANDLER_ABORTED and removes the handler container at once. */
  signal?: AbortSignal;
}

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
  stderr?: Writable;
}

export interface CommandResult {
  exitCode: number;
  /** What the command wrote, unless `stdout` / `stderr` streams were given. */
  stdout: string;
  stderr: string;
}

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

export async function runHandler(ctx: Context, containerId: string, handler: unknown, options: unknown): Promise<unknown> {
  checkReference(containerId, 'container');
  if (typeof handler === 'function') {
    const { mode, signal } = handlerOptions(options, ['mode', 'signal']);
    return withHandlerContainer(ctx, containerId, mode, undefined, signal, (container, volumes) =>
      untilAborted(Promise.resolve().then(() => handler({ container, volumes, signal: signal ?? new AbortController().signal })), signal),
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

/**
 * Creates the transient container that shares the target's volumes, runs `body`, and
 * removes the container whatever happens. While it exists the volumes are in use, so
 * they cannot be removed or pruned. It records this process, so that recover() removes
 * it if the process dies first. `body` also gets the target's configuration, with its own modes.
 */
export async function withHandlerContainer<T>(
  ctx: Context,
  targetId: string,
  mode: Mode | undefined,
  rootfs: string | undefined,
  signal: AbortSignal | undefined,
  body: (container: ContainerConfig, volumes: HandlerVolume[], target: ContainerConfig) => Promise<T>,
): Promise<T> {
  throwIfAborted(signal);
  const scratch = rootfs ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-handler-')));
  try {
    // The target is read under the same lock: its configuration is then exactly what the handler container shares.
    const { container, target } = await ctx.store.exclusive(async () => ({
      target: await ctx.store.readContainer(targetId),
      container: await createContainer(ctx, {
        rootfs: scratch,
        paths: [],
        volumesFrom: [{ containerId: targetId, mode }],
        copyUp: false,
        handler: { handler: { pid: process.pid, bootId: currentBootId() } },
      }),
    }));
    try {
      const volumes = container.volumes.map((v) => ({ ...v, origin: { from: targetId }, hostPath: ctx.store.volumeDir(v.volumeId) }));
      return await body(container, volumes, target);
    } finally {
      // Not through `remove`: the container is ours, its handler has ended here, and nothing
      // of it was mounted on the host (unmounting by its plan would take the host's mounts
      // of the same volumes at the same paths, such as the target's in its own rootfs).
      await ctx.store
        .exclusive(async () => ctx.store.deleteContainer(await ctx.store.readContainer(container.id)))
        .catch((e: Error) => debugRuntime('removing handler container %s failed (recover() will): %s', container.id, e.message));
    }
  } finally {
    if (rootfs === undefined) await fs.rm(scratch, { recursive: true, force: true });
  }
}

/**
 * Records the init of a command handler's namespaces in its container, before the
 * volumes are mounted there: while it lives, `remove` and `recover()` know that a
 * process may still use them, even once the process running the handler is gone.
 * A container removed meanwhile (`remove` with force) stops the handler here.
 */
export async function recordHandlerNamespace(ctx: Context, containerId: string, namespace: NamespaceInit): Promise<void> {
  await ctx.store.exclusive(async () => {
    const config = await ctx.store.readContainer(containerId);
    if (!config.handler) throw new Error(`container ${containerId} is not a handler container`);
    await ctx.store.writeContainer({ ...config, handler: { ...config.handler, namespace } }, config);
  });
}

async function runCommand(ctx: Context, container: ContainerConfig, targetId: string, spec: CommandHandler): Promise<CommandResult> {
  const plan = placeMounts(container, (id) => ctx.store.volumeDir(id));
  const mounts = await privateMounts(plan, (init) => recordHandlerNamespace(ctx, container.id, init));
  try {
    const subprocess = mounts.run(
      ['chroot', container.rootfs, ...spec.command],
      {
        reject: false,
        stdin: spec.stdin ? 'pipe' : 'ignore',
        buffer: { stdout: !spec.stdout, stderr: !spec.stderr },
        // Capped: a command that should be streamed must not fill this process's memory.
        maxBuffer: MAX_COLLECTED,
      },
      { signal: spec.signal, timeout: spec.timeout },
    );
    if (spec.stdin) spec.stdin.pipe(subprocess.stdin as Writable);
    if (spec.stdout) subprocess.stdout?.pipe(spec.stdout, { end: false });
    if (spec.stderr) subprocess.stderr?.pipe(spec.stderr, { end: false });
    const result = await subprocess;
    const stderr = typeof result.stderr === 'string' ? result.stderr : '';
    const what = `handler command ${JSON.stringify(spec.command)} on the volumes of container ${targetId}`;
    if (mounts.stopped === 'abort') throw new HandlerError('ERR_HANDLER_ABORTED', `${what} was aborted`, { stderr }, { cause: spec.signal?.reason });
    if (mounts.stopped === 'timeout') throw new HandlerError('ERR_HANDLER_TIMED_OUT', `${what} timed out after ${spec.timeout} ms`, { stderr });
    if (result.isMaxBuffer) {
      throw new HandlerError('ERR_HANDLER_FAILED', `${what} wrote more than the ${MAX_COLLECTED / 1024 / 1024} MiB of output that are collected: pass stdout and stderr streams instead`, {
        stderr,
      });
    }
    if (result.exitCode !== 0) {
      const why = result.exitCode === undefined ? `was killed by ${result.signal ?? 'a signal'}` : `exited with code ${result.exitCode}`;
      throw new HandlerError('ERR_HANDLER_FAILED', `${what} ${why}${stderr ? `: ${stderr.slice(-500)}` : ''}`, {
        ...(result.exitCode === undefined ? {} : { exitCode: result.exitCode }),
        stderr,
      });
    }
    return { exitCode: 0, stdout: typeof result.stdout === 'string' ? result.stdout : '', stderr };
  } finally {
    await mounts.close();
  }
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new HandlerError('ERR_HANDLER_ABORTED', 'the handler was aborted before it started', {}, { cause: signal.reason });
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

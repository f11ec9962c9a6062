import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { execa } from 'execa';
import { MountCommandError } from '../../errors.js';
import { debugMount } from '../../debug.js';
import { procPathOf } from '../../rootfs/open-in-rootfs.js';
import type { Namespace } from '../target-namespace.js';

/** `umount` says this (exit 32, in the C locale we run it in) when there is nothing to unmount. */
export const NOTHING_MOUNTED = /not mounted|no mount point specified/;

export interface CommandResult {
  command: string[];
  exitCode: number;
  stderr: string;
}

export async function run(ns: Namespace, argv: string[]): Promise<CommandResult> {
  const command = ns.command(argv);
  debugMount('run %o', command);
  const result = await execa(command[0] as string, command.slice(1), { stdin: 'ignore', env: { LC_ALL: 'C' }, reject: false });
  if (result.exitCode === undefined) {
    const why = result.message ?? 'no exit code';
    throw new MountCommandError('ERR_MOUNT_FAILED', `${command[0]} could not be run: ${why}`, { command, exitCode: undefined, stderr: why });
  }
  return { command, exitCode: result.exitCode, stderr: String(result.stderr ?? '') };
}

/** util-linux names the target it is complaining about at the start of its message. */
export function linesAbout(stderr: string, target: string): string[] {
  return stderr.split('\n').filter((line) => line.includes(`${target}:`));
}

export function commandFailed(code: 'ERR_MOUNT_FAILED' | 'ERR_UNMOUNT_FAILED', what: string, result: CommandResult, target: string): MountCommandError {
  const said = linesAbout(result.stderr, target).join('\n') || result.stderr || `exit code ${result.exitCode}`;
  return new MountCommandError(code, `${what} failed: ${said}`, { command: result.command, exitCode: result.exitCode, stderr: result.stderr });
}

/**
 * Runs `fn` with the path of a generated fstab. The file is unlinked as soon as it is
 * written and passed as `/proc/<pid>/fd/<n>`, so nothing is left behind by a crash and
 * nobody can swap it.
 */
export async function withFstab<T>(lines: readonly string[], fn: (fstab: string) => Promise<T>): Promise<T> {
  const file = path.join(os.tmpdir(), `container-volumes-fstab-${randomUUID()}`);
  const fd = openSync(file, 'wx', 0o600);
  try {
    unlinkSync(file);
    writeSync(fd, `${lines.join('\n')}\n`);
    return await fn(procPathOf(fd));
  } finally {
    closeSync(fd);
  }
}

import { Writable } from 'node:stream';
import { ContainerVolumesError, describe } from '../errors.js';
import type { Progress } from './transfer-options.js';

/*
 * rsync as sync and restore run it: its options, the ssh it uses, and what it prints.
 */

/**
 * Archive mode, hard links, ACLs, extended attributes (every namespace, as root),
 * sparse files, numeric owners: what a backup keeps. `--protect-args` sends the paths
 * over rsync's protocol, never through the remote shell.
 */
export const RSYNC = ['rsync', '--archive', '--hard-links', '--acls', '--xattrs', '--sparse', '--numeric-ids', '--protect-args', '--info=progress2', '--stats'];

/** rsync's exit code for "some files vanished before they could be transferred": a live source, no failure. */
export const VANISHED = 24;

/** A characters rsync's `-e` splitting or quoting would change: an ssh argument holding one is refused. */
const UNSAFE = /[\s'"\\]/;

/**
 * The `-e` command: ssh, never prompting (a library has nobody to answer), then the
 * caller's arguments. rsync splits this string at whitespace and honours quotes and
 * backslashes itself (no shell is involved): an argument without any of them reaches
 * ssh exactly as given, so those are refused rather than quoted.
 */
export function sshCommand(args: readonly string[]): string {
  return ['ssh', '-o', 'BatchMode=yes', ...args].join(' ');
}

export function checkSshArgs(given: unknown): string[] {
  if (given === undefined) return [];
  if (!Array.isArray(given)) throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `ssh must be an array of ssh arguments, got ${describe(given)}`);
  for (const arg of given) {
    if (typeof arg !== 'string' || arg === '' || arg.includes('\0') || UNSAFE.test(arg)) {
      throw new ContainerVolumesError(
        'ERR_INVALID_ARGUMENT',
        `each ssh argument must be a non-empty string without whitespace, quotes or backslashes (rsync splits its -e command there), got ${describe(arg)}: put such values in an ssh config file (-F)`,
      );
    }
  }
  return given as string[];
}

/** What rsync's --stats says it did. A figure missing from its report is 0. */
export interface RsyncStats {
  /** Files, directories, links… the source holds. */
  files: number;
  /** Regular files whose data was sent (new or changed). */
  filesTransferred: number;
  /** Entries the destination had and the source no longer has. */
  filesDeleted: number;
  /** The size of the source's regular files. */
  totalFileSize: number;
  /** Data sent as is (the rest was matched from the destination's old copy). */
  literalData: number;
  /** Bytes rsync's sending side sent, protocol included (between two local processes for a local destination). */
  bytesSent: number;
  /** Bytes rsync's sending side received, protocol included: the receiver's checksums and replies. */
  bytesReceived: number;
}

/**
 * rsync's standard output, as it comes: progress lines (`--info=progress2`,
 * `<bytes> <percent>% …`, redrawn with \r) become `onProgress` calls, and the
 * `--stats` report at the end is kept for `stats()`.
 */
export class RsyncOutput extends Writable {
  /** The last line, while it is still being written. */
  #pending = '';
  /** The --stats report, once it began. */
  #report: string | undefined;
  #done = 0;
  readonly #onProgress: ((progress: Progress) => void) | undefined;

  constructor(onProgress: ((progress: Progress) => void) | undefined) {
    super();
    this.#onProgress = onProgress;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    if (this.#report !== undefined) {
      this.#report += chunk.toString('latin1');
      return callback();
    }
    const text = this.#pending + chunk.toString('latin1');
    const reportAt = text.indexOf('Number of files:');
    const lines = (reportAt >= 0 ? text.slice(0, reportAt) : text).split(/[\r\n]/);
    this.#pending = reportAt >= 0 ? '' : (lines.pop() ?? '');
    if (reportAt >= 0) this.#report = text.slice(reportAt);
    for (const line of lines) {
      const match = /^\s*([\d,]+)\s+(\d+)%/.exec(line);
      if (!match) continue;
      const bytes = number(match[1]!);
      const percent = Number(match[2]);
      this.#done = Math.max(this.#done, bytes);
      const total = percent > 0 ? Math.round((bytes * 100) / percent) : bytes;
      this.#onProgress?.({ bytesDone: this.#done, bytesTotal: Math.max(total, this.#done) });
    }
    callback();
  }

  /** Progress at its end: done and total are equal. */
  finish(): void {
    this.#onProgress?.({ bytesDone: this.#done, bytesTotal: this.#done });
  }

  stats(): RsyncStats {
    const value = (label: string) => {
      const match = new RegExp(`^${label}: ([\\d,]+)`, 'm').exec(this.#report ?? '');
      return match ? number(match[1]!) : 0;
    };
    return {
      files: value('Number of files'),
      filesTransferred: value('Number of regular files transferred'),
      filesDeleted: value('Number of deleted files'),
      totalFileSize: value('Total file size'),
      literalData: value('Literal data'),
      bytesSent: value('Total bytes sent'),
      bytesReceived: value('Total bytes received'),
    };
  }
}

const number = (digits: string) => Number(digits.replaceAll(',', ''));

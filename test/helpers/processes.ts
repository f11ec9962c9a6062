import fs from 'node:fs';
import type { Readable } from 'node:stream';

/** The state letter of /proc/<pid>/stat ('R', 'S', 'T' for stopped, 'Z'…), undefined once the process is gone. */
export function processState(pid: number): string | undefined {
  try {
    return /^\d+ \(.*\) (\S)/.exec(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

/**
 * The pid of a child of `pid` whose command name is `comm`, polled as fast as the event
 * loop allows (a short-lived child must be caught while it runs); fails once `exited()`.
 */
export async function childNamed(pid: number, comm: string, exited: () => boolean): Promise<number> {
  while (!exited()) {
    let children: string[] = [];
    try {
      children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean);
    } catch {
      // The process is exiting.
    }
    for (const child of children) {
      try {
        if (fs.readFileSync(`/proc/${child}/comm`, 'utf8').trim() === comm) return Number(child);
      } catch {
        // Already gone.
      }
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`process ${pid} exited before it ran ${comm}`);
}

/** Calls `onLine` with each JSON line a worker prints, parsed, as the lines complete. */
export function onJsonLines<T>(stream: Readable, onLine: (line: T) => void): void {
  let buffer = '';
  stream.setEncoding('utf8').on('data', (chunk: string) => {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      if (line.trim() !== '') onLine(JSON.parse(line) as T);
    }
  });
}

/** SIGKILLs a process that may already be gone. */
export function killIfAlive(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

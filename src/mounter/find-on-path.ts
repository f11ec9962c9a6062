import { accessSync, constants as fsConstants } from 'node:fs';
import path from 'node:path';

/**
 * The first executable `tool` in PATH's absolute directories, as an absolute path, or
 * undefined. Relative directories are skipped: what they name changes with the working
 * directory, and a helper may run with another root.
 */
export function findOnPath(tool: string): string | undefined {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((dir) => path.isAbsolute(dir));
  return dirs.map((dir) => path.join(dir, tool)).find(isExecutable);
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

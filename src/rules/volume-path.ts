import path from 'node:path';
import { ContainerVolumesError, describe } from '../errors.js';

/** Linux PATH_MAX counts the terminating NUL; NAME_MAX bounds each component. */
const PATH_MAX = 4096;
const NAME_MAX = 255;

function invalid(given: unknown, rule: string): ContainerVolumesError {
  const shown = typeof given === 'string' ? JSON.stringify(given) : String(given);
  return new ContainerVolumesError('ERR_INVALID_VOLUME_PATH', `invalid volume path ${shown}: ${rule}`);
}

/**
 * Validates a container path and returns it cleaned the way Docker cleans it
 * (`/var/log/` and `/var//log` are `/var/log`). `..` is refused rather than resolved:
 * a path that climbs is a mistake or an attack, never something to guess at.
 */
export function normalizeVolumePath(given: unknown): string {
  if (typeof given !== 'string') throw invalid(given, 'must be a string');
  if (given.includes('\0')) throw invalid(given, 'must not contain a NUL byte');
  if (!given.startsWith('/')) throw invalid(given, 'must be absolute');
  const segments = given.split('/');
  if (segments.includes('..')) throw invalid(given, "must not contain '..' segments");
  const cleaned = path.posix.normalize(given).replace(/\/+$/, '');
  if (cleaned === '') throw invalid(given, "must not be '/'");
  if (Buffer.byteLength(cleaned) >= PATH_MAX) throw invalid(given, `must be shorter than PATH_MAX (${PATH_MAX} bytes)`);
  if (cleaned.split('/').some((s) => Buffer.byteLength(s) > NAME_MAX)) {
    throw invalid(given, `each component must be at most NAME_MAX (${NAME_MAX} bytes)`);
  }
  return cleaned;
}

/** Validates and cleans a list of paths; the same path given twice is one volume. */
export function normalizeVolumePaths(given: unknown): string[] {
  if (!Array.isArray(given)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `volume paths must be an array of strings, got ${describe(given)}`);
  }
  return [...new Set(given.map(normalizeVolumePath))];
}

/** Parents before children: a child's mount point lives inside its parent's volume. */
export function compareParentsFirst(a: string, b: string): number {
  const depth = a.split('/').length - b.split('/').length;
  return depth !== 0 ? depth : a < b ? -1 : a > b ? 1 : 0;
}

/** Whether container path `child` lies strictly below `parent`. */
export function isBelow(child: string, parent: string): boolean {
  return child.startsWith(`${parent}/`);
}

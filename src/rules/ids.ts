import { v4 as uuidv4, validate } from 'uuid';
import { ContainerVolumesError, describe } from '../errors.js';

export function newId(): string {
  return uuidv4();
}

/**
 * Ids become file names under the store (`volumes/<id>`, `containers/<id>.json`), so
 * only the canonical lower-case uuid form is accepted: nothing with `/`, `..` or NUL
 * can ever be joined into a path.
 */
export function isId(value: unknown): value is string {
  return typeof value === 'string' && validate(value) && value === value.toLowerCase();
}

export function checkId(value: unknown, what: 'container' | 'volume'): string {
  if (!isId(value)) {
    throw new ContainerVolumesError('ERR_INVALID_ID', `invalid ${what} id ${describe(value)}: must be a lower-case uuid`);
  }
  return value;
}

/**
 * A container or volume named by a caller. Any string that is not an id names nothing,
 * as Docker answers "no such container" to any name it does not know: NOT_FOUND, before
 * anything could join it into a path. Ids read from disk go through checkId instead.
 */
export function checkReference(value: unknown, what: 'container' | 'volume'): string {
  if (typeof value !== 'string') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `a ${what} id must be a string, got ${describe(value)}`);
  }
  if (!isId(value)) {
    const code = what === 'container' ? 'ERR_CONTAINER_NOT_FOUND' : 'ERR_VOLUME_NOT_FOUND';
    throw new ContainerVolumesError(code, `no such ${what}: ${describe(value)} (not a valid ${what} id)`);
  }
  return value;
}

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

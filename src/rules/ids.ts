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
 * A container or volume named by a caller, as a full id. Any string that is not an id names nothing,
 * as Docker answers "no such container" to any name it does not know: NOT_FOUND, before
 * anything could join it into a path. Ids read from disk go through checkId instead.
 */
export function checkReference(value: unknown, what: 'container' | 'volume'): string {
  if (typeof value !== 'string') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `a ${what} id must be a string, got ${describe(value)}`);
  }
  if (!isId(value)) throw notFound(value, what, `not a valid ${what} id`);
  return value;
}

/** Lower-case hex digits and dashes, no longer than an id: the only strings that can begin an id. */
const PREFIX = /^[0-9a-f-]{1,36}$/;

/**
 * A caller's reference that may name a container or volume: a full id or, as Docker
 * allows, any beginning of one, however short. A string that cannot begin an id
 * (upper case, `/`, `..`, empty) names nothing: NOT_FOUND at once, so nothing that is
 * not an id ever reaches a path or a listing.
 */
export function checkReferenceShape(value: unknown, what: 'container' | 'volume'): string {
  if (typeof value !== 'string') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `a ${what} id must be a string, got ${describe(value)}`);
  }
  if (!isId(value) && !PREFIX.test(value)) throw notFound(value, what, `not a valid ${what} id or the beginning of one`);
  return value;
}

/**
 * The full id a caller's reference names. A full id is returned as it is, without
 * listing anything (whether it exists is for the caller to find out); a prefix is
 * matched against `ids()`, the ids in the store. A prefix that begins no id is
 * NOT_FOUND, one that begins several is ERR_AMBIGUOUS_ID naming them all.
 */
export async function resolveReference(value: unknown, what: 'container' | 'volume', ids: () => Promise<string[]>): Promise<string> {
  const reference = checkReferenceShape(value, what);
  if (isId(reference)) return reference;
  const matches = (await ids()).filter((id) => id.startsWith(reference));
  if (matches.length === 1) return matches[0] as string;
  if (matches.length === 0) throw notFound(reference, what, `no ${what} id begins with it`);
  throw new ContainerVolumesError(
    'ERR_AMBIGUOUS_ID',
    `${what} id prefix ${describe(reference)} is ambiguous: it begins ${matches.length} ${what} ids (${matches.sort().join(', ')}); give more of the id`,
  );
}

function notFound(value: string, what: 'container' | 'volume', why: string): ContainerVolumesError {
  const code = what === 'container' ? 'ERR_CONTAINER_NOT_FOUND' : 'ERR_VOLUME_NOT_FOUND';
  return new ContainerVolumesError(code, `no such ${what}: ${describe(value)} (${why})`);
}

import { ContainerVolumesError, describe } from '../errors.js';
import type { Mode } from '../types.js';
import { checkReference } from './ids.js';

export interface VolumesFromSpec {
  containerId: string;
  /** Undefined: each volume keeps the mode it has in the source. */
  mode: Mode | undefined;
}

export function checkMode(value: unknown, concerning: string): Mode | undefined {
  if (value === undefined || value === 'ro' || value === 'rw') return value;
  throw new ContainerVolumesError('ERR_INVALID_MODE', `invalid mode ${describe(value)} for ${concerning}: must be 'ro' or 'rw'`);
}

/**
 * Parses one `--volumes-from` entry: `<id>`, `<id>:ro` or `<id>:rw`. The mode is checked
 * first: a bad suffix is ERR_INVALID_MODE whatever precedes it.
 */
export function parseVolumesFrom(entry: unknown): VolumesFromSpec {
  if (typeof entry !== 'string') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `volumesFrom entries must be strings, got ${describe(entry)}`);
  }
  const colon = entry.indexOf(':');
  if (colon === -1) return { containerId: checkReference(entry, 'container'), mode: undefined };
  // A string is never undefined, so checkMode either returns 'ro' | 'rw' or throws ('' included).
  const mode = checkMode(entry.slice(colon + 1), `volumesFrom ${JSON.stringify(entry)}`);
  return { containerId: checkReference(entry.slice(0, colon), 'container'), mode };
}

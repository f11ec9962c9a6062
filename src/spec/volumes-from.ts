import { ContainerVolumesError, describe } from '../errors.js';
import type { Mode } from '../types.js';
import { checkId } from './ids.js';

export interface VolumesFromSpec {
  containerId: string;
  /** Undefined: each volume keeps the mode it has in the source. */
  mode: Mode | undefined;
}

export function checkMode(value: unknown, concerning: string): Mode | undefined {
  if (value === undefined || value === 'ro' || value === 'rw') return value;
  throw new ContainerVolumesError('ERR_INVALID_MODE', `invalid mode ${describe(value)} for ${concerning}: must be 'ro' or 'rw'`);
}

/** Parses one `--volumes-from` entry: `<id>`, `<id>:ro` or `<id>:rw`. */
export function parseVolumesFrom(entry: unknown): VolumesFromSpec {
  if (typeof entry !== 'string') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `volumesFrom entries must be strings, got ${describe(entry)}`);
  }
  const colon = entry.indexOf(':');
  if (colon === -1) return { containerId: checkId(entry, 'container'), mode: undefined };
  const containerId = checkId(entry.slice(0, colon), 'container');
  const mode = entry.slice(colon + 1);
  // A string is never undefined, so checkMode either returns 'ro' | 'rw' or throws ('' included).
  return { containerId, mode: checkMode(mode, `volumesFrom ${JSON.stringify(entry)}`) };
}

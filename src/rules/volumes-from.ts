import { ContainerVolumesError, describe } from '../errors.js';
import type { ContainerConfig } from '../store/container-config.js';
import type { Mode, VolumeMount } from '../types.js';
import { checkReferenceShape } from './ids.js';

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
 * Parses one `--volumes-from` entry: `<id>`, `<id>:ro` or `<id>:rw`, where `<id>` may be a
 * prefix of an id (the caller resolves it). The mode is checked first: a bad suffix is
 * ERR_INVALID_MODE whatever precedes it.
 */
export function parseVolumesFrom(entry: unknown): VolumesFromSpec {
  if (typeof entry !== 'string') {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `volumesFrom entries must be strings, got ${describe(entry)}`);
  }
  const colon = entry.indexOf(':');
  if (colon === -1) return { containerId: checkReferenceShape(entry, 'container'), mode: undefined };
  // A string is never undefined, so checkMode either returns 'ro' | 'rw' or throws ('' included).
  const mode = checkMode(entry.slice(colon + 1), `volumesFrom ${JSON.stringify(entry)}`);
  return { containerId: checkReferenceShape(entry.slice(0, colon), 'container'), mode };
}

/**
 * The mode a shared volume gets: `ro` makes it read-only, while `rw` (or no mode) keeps
 * the source's, so a share can never make a read-only volume writable (Docker ANDs the
 * modes).
 */
export function sharedMode(sourceMode: Mode, requested: Mode | undefined): Mode {
  return requested === 'ro' ? 'ro' : sourceMode;
}

export interface ShareSource {
  config: ContainerConfig;
  /** Undefined keeps each volume's own mode. */
  mode: Mode | undefined;
}

/**
 * Docker's `--volumes-from` rules: every volume of each source at the same path,
 * including those the source itself shares from others; sources apply in order and a
 * later one wins a path; `ro` makes everything read-only while `rw` never makes a
 * read-only volume writable (the modes are ANDed).
 */
export function sharedMounts(sources: readonly ShareSource[]): VolumeMount[] {
  const byPath = new Map<string, VolumeMount>();
  for (const { config, mode } of sources) {
    for (const volume of config.volumes) {
      byPath.set(volume.path, {
        path: volume.path,
        volumeId: volume.volumeId,
        mode: sharedMode(volume.mode, mode),
        origin: { from: config.id },
      });
    }
  }
  return [...byPath.values()];
}

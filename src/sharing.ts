import type { ContainerConfig } from './store/container-config.js';
import type { Mode, VolumeMount } from './types.js';

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
        mode: mode === 'ro' ? 'ro' : volume.mode,
        origin: { from: config.id },
      });
    }
  }
  return [...byPath.values()];
}

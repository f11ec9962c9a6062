import fs from 'node:fs';
import path from 'node:path';
import { BindMounter, ContainerRuntime } from '../../src/index.js';

/**
 * A store with real bind mounts in a new directory under `base`, for the real-mount
 * tests: its runtime, another one on the same root (what a restarted process would
 * open), rootfs directories made on demand under `<dir>/rootfs/`, and the store's files.
 */
export function realWorld(base: string) {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  return {
    dir,
    root,
    runtime: new ContainerRuntime({ root, mounter: new BindMounter() }),
    restarted: () => new ContainerRuntime({ root, mounter: new BindMounter() }),
    rootfs(name: string): string {
      const p = path.join(dir, 'rootfs', name);
      fs.mkdirSync(p, { recursive: true });
      return p;
    },
    volumeDir: (volumeId: string) => path.join(root, 'volumes', volumeId),
    editConfig(containerId: string, edit: (config: Record<string, unknown>) => void): void {
      const file = path.join(root, 'containers', `${containerId}.json`);
      const config = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      edit(config);
      fs.writeFileSync(file, JSON.stringify(config));
    },
  };
}

import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { cleanupTemp, sandbox } from '../helpers/fixtures.js';

/*
 * Damage to the store that a user, a container or the host can cause, and that must
 * never break the store for good: every call either works or fails with a code, and
 * the damage is repaired by the next call or by recover().
 */

afterAll(cleanupTemp);

/**
 * Makes `dir/a…a/a…a/…/leaf` deeper than PATH_MAX (4,096 bytes), as any process in a
 * container can: one relative mkdir and chdir at a time, in a child process.
 */
function makeDeepTree(dir: string): void {
  const script = `
    const fs = require('node:fs');
    process.chdir(process.argv[1]);
    for (let i = 0; i < 24; i++) { fs.mkdirSync('a'.repeat(250)); process.chdir('a'.repeat(250)); }
    fs.writeFileSync('leaf', 'deep\\n');
  `;
  execFileSync(process.execPath, ['-e', script, dir]);
}

/** Removes what a failed test may have left: GNU rm walks by descriptors, fs.rm cannot. */
async function removeDeep(dir: string): Promise<void> {
  execFileSync('rm', ['-rf', '--one-file-system', '--', dir]);
}

describe('a path deeper than PATH_MAX inside a volume', () => {
  test('remove(id, { volumes: true }), volumes.remove, prune and recover() delete it and keep working', async () => {
    const box = await sandbox();
    try {
      const rootfs = await box.rootfs('app');
      const volumeDir = (info: { volumes: { volumeId: string }[] }) => path.join(box.root, 'volumes', info.volumes[0]!.volumeId);

      // remove -v
      const a = await box.runtime.create({ rootfs, volumes: ['/data'] });
      makeDeepTree(volumeDir(a));
      await box.runtime.remove(a.id, { volumes: true });
      expect(existsSync(volumeDir(a))).toBe(false);
      expect(await fs.readdir(path.join(box.root, 'trash'))).toEqual([]);

      // prune of a volume kept after its container went
      const b = await box.runtime.create({ rootfs, volumes: ['/data'] });
      makeDeepTree(volumeDir(b));
      await box.runtime.remove(b.id);
      expect(await box.runtime.volumes.prune()).toEqual({ removed: [b.volumes[0]!.volumeId] });
      expect(existsSync(volumeDir(b))).toBe(false);

      // volumes.remove
      const c = await box.runtime.create({ rootfs, volumes: ['/data'] });
      makeDeepTree(volumeDir(c));
      await box.runtime.remove(c.id);
      await box.runtime.volumes.remove(c.volumes[0]!.volumeId);
      expect(existsSync(volumeDir(c))).toBe(false);

      // trash left by an interrupted delete: recover() empties it
      const trashed = path.join(box.root, 'trash', `${a.volumes[0]!.volumeId}.1`);
      await fs.mkdir(trashed);
      makeDeepTree(trashed);
      const report = await box.runtime.recover();
      expect(report.removedFiles).toEqual([`trash/${path.basename(trashed)}`]);
      expect(await fs.readdir(path.join(box.root, 'trash'))).toEqual([]);
      expect((await box.runtime.recover()).removedFiles).toEqual([]);
      expect(await box.runtime.list()).toEqual([]);
    } finally {
      await removeDeep(box.dir);
    }
  });
});

/**
 * prune({ dryRun: true }) reports what prune would delete and changes nothing;
 * volumes.diskUsage measures a volume as GNU du does (the oracle), hard links once,
 * at any depth, without following symlinks, and stops early when asked.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, openSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { type DiskUsage, FakeMounter } from '../../src/index.js';
import { cleanupTemp, sandbox, snapshotTree } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

describe('prune({ dryRun: true })', () => {
  test('lists exactly what prune then deletes, and deletes nothing itself', async () => {
    const box = await sandbox(new FakeMounter());
    const { runtime } = box;
    const kept = await runtime.create({ rootfs: await box.rootfs('kept'), volumes: ['/data'] });
    const gone = await runtime.create({ rootfs: await box.rootfs('gone'), volumes: ['/a', '/b'] });
    const sharer = await runtime.create({ rootfs: await box.rootfs('sharer'), volumesFrom: [kept.id] });
    await runtime.remove(gone.id);
    await runtime.remove(kept.id); // its volume stays in use by sharer
    const unused = gone.volumes.map((v) => v.volumeId).sort();

    const before = await snapshotTree(box.dir);
    const preview = await runtime.volumes.prune({ dryRun: true });
    expect(preview.removed).toEqual(unused);
    expect(await snapshotTree(box.dir)).toEqual(before);
    // Asking again gives the same answer: the preview did not consume anything.
    expect(await runtime.volumes.prune({ dryRun: true })).toEqual(preview);

    expect(await runtime.volumes.prune({ dryRun: false })).toEqual(preview);
    expect((await runtime.volumes.list()).map((v) => v.id)).toEqual([sharer.volumes[0]?.volumeId]);
    expect(await runtime.volumes.prune({ dryRun: true })).toEqual({ removed: [] });
  });

  test('a volume mounted on the host is in neither the preview nor the prune', async () => {
    const fake = new FakeMounter();
    const box = await sandbox(fake);
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'] });
    const volumeId = c.volumes[0]?.volumeId as string;
    await box.runtime.remove(c.id);
    await fake.mount({ source: (await box.runtime.volumes.inspect(volumeId)).hostPath, rootfs: await box.rootfs('elsewhere'), path: '/mnt', mode: 'rw' });
    expect(await box.runtime.volumes.prune({ dryRun: true })).toEqual({ removed: [] });
  });
});

/** GNU du's figures for `dir`, on its own file system: the oracle. */
function du(dir: string): Omit<DiskUsage, 'complete' | 'files' | 'directories'> & { inodes: number } {
  const figure = (...args: string[]) => Number(execFileSync('du', ['-s', '-x', ...args, dir], { encoding: 'utf8' }).split('\t')[0]);
  return { apparentBytes: figure('--apparent-size', '-B1'), allocatedBytes: figure('-B1'), inodes: figure('--inodes') };
}

describe('volumes.diskUsage(volumeId)', () => {
  test('agrees with du: sizes, sparse files, hard links once, symlinks not followed, names that are not UTF-8, deeper than PATH_MAX', async () => {
    const box = await sandbox(new FakeMounter());
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'] });
    const volumeId = c.volumes[0]?.volumeId as string;
    const dir = (await box.runtime.volumes.inspect(volumeId)).hostPath;

    await fs.writeFile(path.join(dir, 'small'), 'x'.repeat(1000));
    await fs.writeFile(path.join(dir, 'big'), Buffer.alloc(300_000, 1));
    const sparse = await fs.open(path.join(dir, 'sparse'), 'w');
    await sparse.truncate(10 * 1024 * 1024);
    await sparse.close();
    await fs.mkdir(path.join(dir, 'sub/inner'), { recursive: true });
    await fs.writeFile(path.join(dir, 'sub/inner/linked'), 'y'.repeat(50_000));
    await fs.link(path.join(dir, 'sub/inner/linked'), path.join(dir, 'linked-again'));
    await fs.link(path.join(dir, 'sub/inner/linked'), path.join(dir, 'sub/linked-thrice'));
    await fs.symlink('/', path.join(dir, 'host-root'));
    await fs.symlink('/etc', path.join(dir, 'sub/host-etc'));
    writeFileSync(Buffer.concat([Buffer.from(`${dir}/`), Buffer.from([0x6e, 0xff, 0xfe])]), 'z'.repeat(7000));
    // A chain of directories deeper than a path can name, made through descriptors.
    let fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    for (let depth = 0; depth < 20; depth++) {
      const next = `/proc/self/fd/${fd}/${String(depth).padStart(3, '0')}${'d'.repeat(240)}`;
      mkdirSync(next);
      const child = openSync(next, constants.O_RDONLY | constants.O_DIRECTORY);
      closeSync(fd);
      fd = child;
    }
    writeFileSync(`/proc/self/fd/${fd}/deepest`, 'w'.repeat(4321));
    closeSync(fd);

    const oracle = du(dir);
    const usage = await box.runtime.volumes.diskUsage(volumeId);
    expect(usage).toEqual({
      apparentBytes: oracle.apparentBytes,
      allocatedBytes: oracle.allocatedBytes,
      // small, big, sparse, linked (once), two symlinks, the non-UTF-8 name, deepest
      files: 8,
      // the volume, sub, sub/inner and the 20 deep ones
      directories: 23,
      complete: true,
    });
    expect(usage.files + usage.directories).toBe(oracle.inodes);
    expect(usage.allocatedBytes).toBeLessThan(usage.apparentBytes); // the sparse file
    expect(du(dir)).toEqual(oracle);
    // fs.rm cannot delete what a path cannot name; GNU rm walks by descriptors.
    execFileSync('rm', ['-rf', '--', dir]);
  });

  test('an empty volume is its own directory', async () => {
    const box = await sandbox(new FakeMounter());
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'] });
    const usage = await box.runtime.volumes.diskUsage(c.volumes[0]?.volumeId as string);
    expect(usage).toMatchObject({ files: 0, directories: 1, complete: true });
  });

  test('an aborted signal or a timeout stops the walk: complete false, figures no larger than the whole', async () => {
    const box = await sandbox(new FakeMounter());
    const c = await box.runtime.create({ rootfs: await box.rootfs('c'), volumes: ['/data'] });
    const volumeId = c.volumes[0]?.volumeId as string;
    const dir = path.join(box.root, 'volumes', volumeId);
    for (let d = 0; d < 10; d++) {
      await fs.mkdir(path.join(dir, `d${d}`));
      for (let f = 0; f < 100; f++) await fs.writeFile(path.join(dir, `d${d}`, `f${f}`), 'data');
    }
    const whole = await box.runtime.volumes.diskUsage(volumeId, { timeout: 60_000 });
    expect(whole).toMatchObject({ files: 1000, directories: 11, complete: true });

    const aborted = await box.runtime.volumes.diskUsage(volumeId, { signal: AbortSignal.abort() });
    expect(aborted).toMatchObject({ files: 0, directories: 1, complete: false });

    // However fast the machine, a result is either the whole or a lower bound marked incomplete.
    const bounded = await box.runtime.volumes.diskUsage(volumeId, { timeout: 1 });
    if (bounded.complete) expect(bounded).toEqual(whole);
    else {
      expect(bounded.files).toBeLessThanOrEqual(whole.files);
      expect(bounded.apparentBytes).toBeLessThanOrEqual(whole.apparentBytes);
    }
  });
});

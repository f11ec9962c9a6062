import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { isErrnoException } from '../errors.js';

/** A volume being restored: its container path, and its (empty) directory in the store. */
export interface PlacedVolume {
  path: string;
  dir: string;
}

/**
 * Moves each volume's tree out of `staging`, where tar extracted the archive under the
 * volumes' container paths, into the volume's own directory. Everything stays on one
 * file system, so hard links survive, also between two volumes. The moves change the
 * modification times of the directories they touch, so those are put back afterwards;
 * a nested volume's place in its parent's tree becomes an empty mount point, as
 * mounting would make it. `staging` is removed. `invalid` makes the error for a volume
 * path the archive holds as something other than a directory (a symlink, say).
 */
export async function placeVolumes(staging: string, volumes: readonly PlacedVolume[], invalid: (why: string) => Error): Promise<void> {
  // Deepest first: a nested volume's tree leaves its parent's before that one moves.
  const order = [...volumes].sort((a, b) => b.path.split('/').length - a.path.split('/').length);
  const rootTimes: [string, bigint][] = [];
  for (const volume of order) {
    const tree = await stagedTree(staging, volume.path, invalid);
    // Not in the archive: the volume stays empty.
    if (tree === undefined) continue;
    const parent = path.dirname(tree);
    const parentTime = parent === staging ? undefined : (await fs.lstat(parent, { bigint: true })).mtimeNs;
    rootTimes.push([volume.dir, (await fs.lstat(tree, { bigint: true })).mtimeNs]);
    const treeBytes = Buffer.from(`${tree}/`);
    const dirBytes = Buffer.from(`${volume.dir}/`);
    // Names are bytes: a name that is not UTF-8 must move as it is.
    for (const name of await fs.readdir(tree, { encoding: 'buffer' })) {
      await fs.rename(Buffer.concat([treeBytes, name]), Buffer.concat([dirBytes, name]));
    }
    // The root's owner, mode, ACLs and extended attributes, copied the way copy-up copies them.
    await execa('cp', ['-a', '--', `${tree}/.`, `${volume.dir}/`], { stdin: 'ignore', env: { LC_ALL: 'C' } });
    await fs.rmdir(tree);
    if (parentTime !== undefined) {
      await fs.mkdir(tree, { mode: 0o755 });
      await setModificationTime(parent, parentTime);
    }
  }
  await fs.rm(staging, { recursive: true, force: true });
  // Last: removing the staging directory changed its volume's time too.
  for (const [dir, mtimeNs] of rootTimes) await setModificationTime(dir, mtimeNs);
}

/** Where `containerPath` is under `staging`, each component a real directory (never a symlink followed); undefined if absent. */
async function stagedTree(staging: string, containerPath: string, invalid: (why: string) => Error): Promise<string | undefined> {
  let current = staging;
  for (const component of containerPath.split('/').filter(Boolean)) {
    current = path.join(current, component);
    try {
      const stat = await fs.lstat(current);
      if (!stat.isDirectory()) throw invalid(`${path.relative(staging, current)} is not a directory in it, but the volume ${containerPath} is there`);
    } catch (error) {
      if (isErrnoException(error, 'ENOENT')) return undefined;
      throw error;
    }
  }
  return current;
}

/** Node's utimes takes seconds as a double, which cannot hold nanoseconds: touch can. */
async function setModificationTime(file: string, mtimeNs: bigint): Promise<void> {
  const negative = mtimeNs < 0n;
  const abs = negative ? -mtimeNs : mtimeNs;
  const date = `@${negative ? '-' : ''}${abs / 1_000_000_000n}.${(abs % 1_000_000_000n).toString().padStart(9, '0')}`;
  await execa('touch', ['--no-create', '--no-dereference', '--time=mtime', `--date=${date}`, '--', file], { stdin: 'ignore', env: { LC_ALL: 'C' } });
}

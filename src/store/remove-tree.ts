import { execa } from 'execa';

/**
 * Removes a directory tree at any depth. Node's recursive rm builds whole paths and
 * fails with ENAMETOOLONG below PATH_MAX (4,096 bytes), a depth any process in a
 * container can create; coreutils rm walks by descriptors. Never leaves the tree's file system.
 */
export async function removeTree(dir: string): Promise<void> {
  await execa('rm', ['-rf', '--one-file-system', '--', dir], { stdin: 'ignore', env: { LC_ALL: 'C' } });
}

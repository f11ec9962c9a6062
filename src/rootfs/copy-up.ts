import { fstatSync, mkdirSync, statSync } from 'node:fs';
import { execa } from 'execa';
import { ContainerVolumesError } from '../errors.js';
import { openInRootfs } from './open-in-rootfs.js';

/**
 * Two empty directories that every copy mounts over, the rootfs directory on one and the
 * volume on the other, each in a private mount namespace of its own: copies running at
 * once do not see each other's mounts, and the host never sees any of them.
 */
const VIEWS = '/run/container-volumes/copy-up';
const ROOTFS_VIEW = `${VIEWS}/rootfs`;
const VOLUME_VIEW = `${VIEWS}/volume`;

/**
 * Run by `sh` inside the private namespace with the rootfs directory and the volume
 * (host paths), the two views, and the identities (`dev:ino`) the first two must have,
 * as `$1`–`$5`: never spliced into the script.
 *
 * A mount of the parent namespace, which the pinned descriptor is on, cannot be the
 * source of a bind in a new namespace, so the directory is found again by its path; a
 * directory on that path swapped since it was pinned makes the identities differ, and
 * the copy is refused before anything is read. `nosymfollow` then makes the kernel
 * refuse to follow any symlink on either view, so `cp`, which walks below the top
 * directory by path, cannot be steered out of the rootfs by a directory swapped for a
 * symlink while it copies (it fails with ELOOP instead), nor write through a symlink it
 * made itself. The binds are not recursive: mounts inside the rootfs directory are not
 * copied. A kernel older than Linux 5.10 ignores `nosymfollow` silently, hence the check
 * in mountinfo before `cp` runs.
 */
const CONFINED_COPY = [
  'set -e',
  'mount --no-canonicalize --bind -o ro,nosymfollow,nosuid,nodev,noexec -- "$1" "$3"',
  'mount --no-canonicalize --bind -o nosymfollow,nosuid,nodev,noexec -- "$2" "$4"',
  'if [ "$(stat -c %d:%i -- "$3" "$4")" != "$5" ]; then echo "$1: changed while it was being copied" >&2; exit 1; fi',
  'if [ "$(grep -c -e " $3 [^ ]*nosymfollow" -e " $4 [^ ]*nosymfollow" /proc/self/mountinfo)" != 2 ]; then',
  '  echo "the kernel did not apply nosymfollow (Linux 5.10 or later is needed)" >&2; exit 1',
  'fi',
  'exec cp -a -- "$3/." "$4/"',
].join('\n');

/**
 * What the copy says when the tree changed under it: the script's own identity check,
 * or `cp` (in the C locale) when the kernel refused to follow a symlink on a view.
 */
const TREE_CHANGED = /changed while it was being copied|Too many levels of symbolic links/;

let viewsReady = false;

/**
 * Makes a new volume start as a copy of what the rootfs holds at its path (Docker's
 * copy-up), keeping what `cp -a` keeps: ownership, modes, timestamps, symlinks (as
 * links), hard links, sparse files, extended attributes and ACLs. The source is opened
 * inside the rootfs without following a symlink, and `cp` then reads it only through a
 * mount on which no symlink is followed (see CONFINED_COPY); a tree that changes under
 * the copy is refused with ERR_PATH_ESCAPES_ROOTFS. Refuses a path that is not a
 * directory in the rootfs even when nothing is copied: such a path can never take a
 * mount.
 *
 * Without root no mount namespace can be made: `cp` then copies from the pinned
 * directory unconfined, as the unprivileged user it runs as, which can read nothing
 * that user could not read anyway (and the real mounter, which needs root, cannot be
 * in use).
 */
export async function prepareVolumeContent(rootfs: string, containerPath: string, volumeDir: string, copyUp: boolean) {
  const source = openInRootfs(rootfs, containerPath);
  if (source === null) return;
  try {
    if (!copyUp) return;
    const env = { LC_ALL: 'C' };
    if (process.geteuid?.() === 0) {
      const identities = [fstatSync(source.fd, { bigint: true }), statSync(volumeDir, { bigint: true })].map((s) => `${s.dev}:${s.ino}`).join('\n');
      const args = [source.hostPath, volumeDir, ...views(), identities];
      await execa('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', CONFINED_COPY, 'copy-up', ...args], { env });
    } else {
      await execa('cp', ['-a', '--', `${source.procPath}/.`, `${volumeDir}/`], { env });
    }
  } catch (error) {
    const stderr = ((error as { stderr?: string }).stderr ?? String(error)).trim();
    if (TREE_CHANGED.test(stderr)) {
      throw new ContainerVolumesError(
        'ERR_PATH_ESCAPES_ROOTFS',
        `refusing to copy ${containerPath} from rootfs ${rootfs} into the new volume: it changed while it was being copied, and no symlink is followed (${stderr.split('\n')[0]})`,
        { cause: error },
      );
    }
    throw new ContainerVolumesError('ERR_COPY_UP_FAILED', `copying ${containerPath} from rootfs ${rootfs} into the new volume failed: ${stderr}`, { cause: error });
  } finally {
    source.close();
  }
}

function views(): [string, string] {
  if (!viewsReady) {
    for (const dir of [ROOTFS_VIEW, VOLUME_VIEW]) mkdirSync(dir, { recursive: true, mode: 0o700 });
    viewsReady = true;
  }
  return [ROOTFS_VIEW, VOLUME_VIEW];
}

import { execa } from 'execa';
import { ContainerVolumesError } from '../errors.js';
import { openInRootfs } from './open-in-rootfs.js';

/**
 * Makes a new volume start as a copy of what the rootfs holds at its path (Docker's
 * copy-up), keeping ownership, modes, timestamps, symlinks, hard links and sparse
 * files (`cp -a`). The source is opened inside the rootfs first, so a symlink can
 * never make us copy host files into a volume. Refuses a path that is not a directory
 * in the rootfs even when nothing is copied: such a path can never take a mount.
 */
export async function prepareVolumeContent(rootfs: string, containerPath: string, volumeDir: string, copyUp: boolean) {
  const source = openInRootfs(rootfs, containerPath, false);
  if (source === null) return;
  try {
    if (!copyUp) return;
    // `<dir>/.` copies the contents and the directory's own owner and mode onto the volume.
    await execa('cp', ['-a', '--', `${source.procPath}/.`, `${volumeDir}/`]);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? String(error);
    throw new ContainerVolumesError(
      'ERR_COPY_UP_FAILED',
      `copying ${containerPath} from rootfs ${rootfs} into the new volume failed: ${stderr.trim()}`,
      { cause: error },
    );
  } finally {
    source.close();
  }
}

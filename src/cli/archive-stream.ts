import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BackupOptions, BackupResult, ContainerInfo, ContainerRuntime, RestoreOptions } from 'container-volumes';

/**
 * `backup ID -` and `restore - …`: an archive on stdout or from stdin. The library backs
 * up to a file and restores from one, so these go through a private temporary file; they
 * are the one place to change once it writes to and reads from streams itself.
 */
export async function backupToStream(runtime: ContainerRuntime, containerId: string, out: Writable, options: BackupOptions): Promise<BackupResult> {
  return withTempFile(async (file) => {
    const result = await runtime.backup(containerId, file, options);
    await pipeline(createReadStream(file), out, { end: false });
    return result;
  });
}

export async function restoreFromStream(runtime: ContainerRuntime, input: Readable, options: RestoreOptions): Promise<ContainerInfo> {
  return withTempFile(async (file) => {
    await pipeline(input, createWriteStream(file, { flags: 'wx', mode: 0o600 }));
    return runtime.restore(file, options);
  });
}

async function withTempFile<T>(body: (file: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'container-volumes-cli-'));
  try {
    return await body(path.join(dir, 'archive.tar'));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

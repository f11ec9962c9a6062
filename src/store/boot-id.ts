import { readFileSync } from 'node:fs';

let cached: string | undefined;

/** This boot of the host: mounts and processes of another boot are gone. */
export function currentBootId(): string {
  cached ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return cached;
}

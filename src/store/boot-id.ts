import { readFileSync } from 'node:fs';

let cached: string | undefined;

/** This boot of the host: mounts and processes of another boot are gone. */
export function currentBootId(): string {
  cached ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return cached;
}

/** The kernel's boot id is a uuid; it is the one shape accepted from disk. */
export function isBootId(value: unknown): value is string {
  return typeof value === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(value);
}

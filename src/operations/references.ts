import type { Context } from '../context.js';
import { resolveReference } from '../rules/ids.js';

/** The full id of the container a caller names by its id or a unique prefix of it. */
export function resolveContainer(ctx: Context, reference: unknown): Promise<string> {
  return resolveReference(reference, 'container', () => ctx.store.listContainerIds());
}

/** The full id of the volume a caller names by its id or a unique prefix of it. */
export function resolveVolume(ctx: Context, reference: unknown): Promise<string> {
  return resolveReference(reference, 'volume', () => ctx.store.listVolumeIds());
}

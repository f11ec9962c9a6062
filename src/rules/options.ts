import { ContainerVolumesError, describe } from '../errors.js';

/**
 * Checks an options object. Unknown keys are refused rather than ignored, so that a
 * typo (`volume:` for `volumes:`) is an error instead of a container without volumes.
 */
export function optionsObject<T extends object>(given: unknown, what: string, known: readonly (keyof T & string)[]): Partial<T> {
  if (given === undefined) return {};
  if (typeof given !== 'object' || given === null || Array.isArray(given)) {
    throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be an object, got ${describe(given)}`);
  }
  const unknown = Object.keys(given).filter((key) => !(known as readonly string[]).includes(key));
  if (unknown.length > 0) {
    throw new ContainerVolumesError(
      'ERR_INVALID_ARGUMENT',
      `${what} has unknown option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${known.join(', ')})`,
    );
  }
  return given as Partial<T>;
}

/** A boolean option, or undefined when not given. */
export function optionalBoolean(given: unknown, what: string): boolean | undefined {
  if (given === undefined || typeof given === 'boolean') return given;
  throw new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${what} must be a boolean, got ${describe(given)}`);
}

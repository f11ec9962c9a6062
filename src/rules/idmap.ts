import { ContainerVolumesError, describe } from '../errors.js';
import type { IdMap, IdMapping } from '../types.js';

/** The kernel takes at most this many lines in a uid_map or gid_map (since Linux 4.15). */
export const MAX_ID_MAP_LINES = 340;
/** (uid_t)-1 means "no id" to the kernel: the highest id a range may hold is one below it. */
const LAST_ID = 0xffff_fffe;

const MAP_KEYS = ['uidMappings', 'gidMappings'] as const;
const RANGE_KEYS = ['containerID', 'hostID', 'size'] as const;

/**
 * Checks a user-namespace mapping as the kernel would take it in uid_map and gid_map,
 * and returns a copy of only its fields. Both lists are required (a user namespace
 * with unmapped groups would show every group as nobody), each of 1 to 340 ranges of
 * whole numbers, every id in 0..4294967294, no two ranges overlapping inside or on the
 * host. ERR_INVALID_ARGUMENT naming the field (`idmap.uidMappings[1].size`).
 */
export function checkIdMap(value: unknown, field: string): IdMap {
  const bad = (where: string, why: string) => new ContainerVolumesError('ERR_INVALID_ARGUMENT', `${where} ${why}`);
  if (!isPlainObject(value)) throw bad(field, `must be an object with uidMappings and gidMappings, got ${describe(value)}`);
  const unknown = Object.keys(value).filter((key) => !(MAP_KEYS as readonly string[]).includes(key));
  if (unknown.length > 0) throw bad(field, `has unknown key${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${MAP_KEYS.join(', ')})`);
  const [uidMappings, gidMappings] = MAP_KEYS.map((key) => checkRanges(value[key], `${field}.${key}`, bad));
  return { uidMappings: uidMappings as IdMapping[], gidMappings: gidMappings as IdMapping[] };
}

function checkRanges(value: unknown, field: string, bad: (where: string, why: string) => Error): IdMapping[] {
  if (!Array.isArray(value)) throw bad(field, `must be an array of { containerID, hostID, size }, got ${describe(value)}`);
  if (value.length < 1 || value.length > MAX_ID_MAP_LINES) {
    throw bad(field, `must hold 1 to ${MAX_ID_MAP_LINES} ranges (the kernel's limit), got ${value.length}`);
  }
  const ranges = value.map((range: unknown, i) => {
    const at = `${field}[${i}]`;
    if (!isPlainObject(range)) throw bad(at, `must be an object { containerID, hostID, size }, got ${describe(range)}`);
    const unknown = Object.keys(range).filter((key) => !(RANGE_KEYS as readonly string[]).includes(key));
    if (unknown.length > 0) throw bad(at, `has unknown key${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${RANGE_KEYS.join(', ')})`);
    for (const key of RANGE_KEYS) {
      const n = range[key];
      if (typeof n !== 'number' || !Number.isInteger(n) || n < (key === 'size' ? 1 : 0) || n > LAST_ID + (key === 'size' ? 1 : 0)) {
        throw bad(`${at}.${key}`, `must be a whole number ${key === 'size' ? `from 1 to ${LAST_ID + 1}` : `from 0 to ${LAST_ID}`}, got ${typeof n === 'number' ? n : describe(n)}`);
      }
    }
    const { containerID, hostID, size } = range as unknown as IdMapping;
    for (const [key, first] of [['containerID', containerID], ['hostID', hostID]] as const) {
      if (first + size - 1 > LAST_ID) throw bad(at, `reaches past id ${LAST_ID} (${key} ${first} + size ${size})`);
    }
    return { containerID, hostID, size };
  });
  for (const key of ['containerID', 'hostID'] as const) {
    const sorted = ranges.map((r, i) => ({ first: r[key], last: r[key] + r.size - 1, i })).sort((a, b) => a.first - b.first);
    for (let j = 1; j < sorted.length; j++) {
      const [a, b] = [sorted[j - 1], sorted[j]] as [(typeof sorted)[number], (typeof sorted)[number]];
      if (b.first <= a.last) throw bad(field, `has overlapping ranges: [${Math.min(a.i, b.i)}] and [${Math.max(a.i, b.i)}] share ${key}s ${b.first}..${Math.min(a.last, b.last)}`);
    }
  }
  return ranges;
}

/** The text the kernel takes in `/proc/<pid>/uid_map` (or gid_map): one `containerID hostID size` line per range. */
export function idMapLines(ranges: readonly IdMapping[]): string {
  return ranges.map((r) => `${r.containerID} ${r.hostID} ${r.size}\n`).join('');
}

/** Equal for two mappings that make the same user namespace. */
export function idMapKey(map: IdMap): string {
  return `${idMapLines(map.uidMappings)}/${idMapLines(map.gidMappings)}`;
}

/** A deep copy, so callers can never change what the store holds. */
export function copyIdMap(map: IdMap): IdMap {
  return { uidMappings: map.uidMappings.map((r) => ({ ...r })), gidMappings: map.gidMappings.map((r) => ({ ...r })) };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

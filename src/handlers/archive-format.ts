import type { Readable } from 'node:stream';
import { ContainerVolumesError } from '../errors.js';
import { isId } from '../rules/ids.js';
import { isBelow, normalizeVolumePath } from '../rules/volume-path.js';
import type { Mode } from '../types.js';

/* The backup archive: a manifest first, then the volumes under their container paths. */

/** The first member of every backup archive: what it holds. */
export const MANIFEST_NAME = 'container-volumes-backup.json';

/**
 * What a backup archive or a sync destination holds, as its first member or its
 * `container-volumes-backup.json`: `restore` reads it before anything is created, and
 * refuses an archive whose manifest it does not recognise (ERR_INVALID_ARCHIVE).
 */
export interface BackupManifest {
  /** Marks the file as this library's manifest; anything else is not a backup. */
  format: 'container-volumes-backup';
  /** The manifest's format version; `restore` knows version 1 only. */
  version: 1;
  /** When the manifest was made, just before the volumes were read: ISO 8601, UTC. */
  createdAt: string;
  /** The container whose volumes were archived. */
  containerId: string;
  /** Each volume, archived under its container path (without the leading `/`). */
  volumes: {
    /** The volume's container path, absolute and clean (`/var/lib/postgres`); unique in the manifest. */
    path: string;
    /**
     * Its mode in the archived container (not the read-only share the backup read it
     * through). Information only: restored volumes are always read-write.
     */
    mode: Mode;
    /** Its id in the store it was archived from. Information only: `restore` makes new volumes with new ids. */
    volumeId: string;
  }[];
}

/** The manifest of the volumes of `containerId`, as `volumes` lists them (with the container's own modes). */
export function makeManifest(containerId: string, volumes: readonly { path: string; mode: Mode; volumeId: string }[]): BackupManifest {
  return {
    format: 'container-volumes-backup',
    version: 1,
    createdAt: new Date().toISOString(),
    containerId,
    volumes: volumes.map(({ path, mode, volumeId }) => ({ path, mode, volumeId })),
  };
}

export function manifestText(manifest: BackupManifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** The paths to hand to tar: the volumes not inside another one (those come with their parent), relative. */
export function outermost(volumes: readonly { path: string }[]): string[] {
  return volumes.filter((v) => !volumes.some((o) => isBelow(v.path, o.path))).map((v) => v.path.slice(1));
}

/** A manifest is small: a longer first member is not one. */
export const MAX_MANIFEST = 16 * 1024 * 1024;
const BLOCK = 512;

/**
 * Reads the archive's head from `stream` up to the end of its manifest, checks the
 * manifest, and puts every byte read back into the stream (unshift), so that tar then
 * reads the whole archive from it. Only the manifest becomes paths before tar runs.
 * `name` is how messages name the archive.
 */
export async function readManifest(stream: Readable, name: string): Promise<BackupManifest> {
  const invalid = (why: string) => new ContainerVolumesError('ERR_INVALID_ARCHIVE', `${name} is not a container-volumes backup: ${why}`);
  let head = Buffer.alloc(0);
  let ended = false;
  const need = async (bytes: number): Promise<boolean> => {
    while (head.length < bytes && !ended) {
      const chunk = stream.read() as Buffer | string | null;
      if (chunk !== null) head = Buffer.concat([head, Buffer.from(chunk)]);
      else ended = await nextEvent(stream);
    }
    return head.length >= bytes;
  };
  try {
    // tar would decompress a file but not a pipe: refuse a compressed archive here, and say why.
    await need(BLOCK);
    const first = head.length >= BLOCK ? head.subarray(0, BLOCK) : Buffer.concat([head, Buffer.alloc(BLOCK - head.length)]);
    const notTar = notTarReason(first);
    if (notTar) throw invalid(notTar);
    let at = 0;
    let extended: Map<string, string> = new Map();
    for (;;) {
      if (!(await need(at + BLOCK))) throw invalid(`it ends before its first member`);
      const header = parseHeader(head.subarray(at, at + BLOCK));
      if (!header) throw invalid(`no ${MANIFEST_NAME} as its first member (a damaged header at byte ${at})`);
      const size = Number(extended.get('size') ?? header.size);
      const dataEnd = at + BLOCK + size;
      if (header.type === 'x' || header.type === 'g') {
        if (size > MAX_MANIFEST || !(await need(dataEnd))) throw invalid('a damaged extended header');
        if (header.type === 'x') extended = parsePax(head.subarray(at + BLOCK, dataEnd));
        at += BLOCK + padded(size);
        continue;
      }
      const memberName = extended.get('path') ?? header.name;
      if (memberName !== MANIFEST_NAME || (header.type !== '0' && header.type !== '\0')) throw invalid(`no ${MANIFEST_NAME} as its first member`);
      if (size > MAX_MANIFEST) throw invalid('its manifest is too large');
      if (!(await need(dataEnd))) throw invalid('it ends inside its manifest');
      return parseManifest(head.subarray(at + BLOCK, dataEnd).toString('utf8'), invalid);
    }
  } catch (error) {
    if (error instanceof ContainerVolumesError) throw error;
    throw invalid(`it cannot be read (${(error as Error).message})`);
  } finally {
    // Every byte read goes back, also on failure: the caller may still read the stream.
    if (head.length > 0 && !stream.destroyed && !stream.readableEnded) stream.unshift(head);
  }
}

/** Waits until `stream` has data, ends (true) or fails (rejects). */
function nextEvent(stream: Readable): Promise<boolean> {
  if (stream.readableEnded) return Promise.resolve(true);
  return new Promise<boolean>((resolve, reject) => {
    const settle = (ended: boolean, error?: Error) => {
      stream.off('readable', onReadable).off('end', onEnd).off('close', onEnd).off('error', onError);
      if (error) reject(error);
      else resolve(ended);
    };
    const onReadable = () => settle(false);
    const onEnd = () => settle(true);
    const onError = (error: Error) => settle(true, error);
    stream.on('readable', onReadable).on('end', onEnd).on('close', onEnd).on('error', onError);
  });
}

interface Header {
  name: string;
  type: string;
  size: number;
}

/** A ustar header block: undefined if it is not one (its checksum is wrong). */
function parseHeader(block: Buffer): Header | undefined {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  if (parseInt(field(block, 148, 8), 8) !== sum) return undefined;
  const prefix = field(block, 345, 155);
  const name = field(block, 0, 100);
  return { name: prefix ? `${prefix}/${name}` : name, type: String.fromCharCode(block[156]!), size: sizeField(block) };
}

function field(block: Buffer, offset: number, length: number): string {
  const raw = block.subarray(offset, offset + length);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? length : nul).toString('utf8').trim();
}

/** Octal, or base-256 (high bit set) for sizes of 8 GiB and more. */
function sizeField(block: Buffer): number {
  if ((block[124]! & 0x80) === 0) return parseInt(field(block, 124, 12), 8) || 0;
  let size = 0;
  for (let i = 125; i < 136; i++) size = size * 256 + block[i]!;
  return size;
}

/** pax records: "<length> <key>=<value>\n". */
function parsePax(data: Buffer): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const length = Number(data.toString('latin1', at, space));
    if (space < 0 || !Number.isSafeInteger(length) || length <= 0) break;
    const record = data.toString('utf8', space + 1, at + length - 1);
    const eq = record.indexOf('=');
    if (eq > 0) records.set(record.slice(0, eq), record.slice(eq + 1));
    at += length;
  }
  return records;
}

const padded = (size: number) => Math.ceil(size / BLOCK) * BLOCK;

/**
 * Follows an archive's structure as it streams past, to tell whether it reached the
 * end-of-archive marker (two zero blocks where a header would be). GNU tar extracting
 * an archive cut at a member's end exits 0 as if it were complete: the marker is what
 * tells a whole archive from a truncated one.
 */
export class ArchiveEnd {
  #reached = false;
  #pending = Buffer.alloc(0);
  /** Bytes of member data (or of an extended header, when #extended is set) still to pass. */
  #skip = 0;
  #extended: Buffer[] | undefined;
  #nextSize: number | undefined;
  #zeroBlocks = 0;

  get reached(): boolean {
    return this.#reached;
  }

  feed(chunk: Buffer): void {
    let data = this.#pending.length > 0 ? Buffer.concat([this.#pending, chunk]) : chunk;
    while (!this.#reached && data.length > 0) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, data.length);
        this.#extended?.push(data.subarray(0, n));
        this.#skip -= n;
        data = data.subarray(n);
        if (this.#skip === 0 && this.#extended) {
          const records = parsePax(Buffer.concat(this.#extended));
          this.#nextSize = records.has('size') ? Number(records.get('size')) : undefined;
          this.#extended = undefined;
        }
        continue;
      }
      if (data.length < BLOCK) break;
      const block = data.subarray(0, BLOCK);
      data = data.subarray(BLOCK);
      if (block.every((byte) => byte === 0)) {
        if (++this.#zeroBlocks === 2) this.#reached = true;
        continue;
      }
      this.#zeroBlocks = 0;
      const header = parseHeader(block);
      // A damaged header: tar fails on it itself.
      if (!header) continue;
      const size = this.#nextSize ?? header.size;
      this.#nextSize = undefined;
      this.#skip = padded(size);
      if (header.type === 'x') this.#extended = [];
    }
    this.#pending = this.#reached ? Buffer.alloc(0) : Buffer.from(data);
  }
}

/** Checks a manifest's text: every path absolute and clean, every mode and id valid, no path twice. */
export function parseManifest(text: string, invalid: (why: string) => Error): BackupManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw invalid('its manifest is not JSON');
  }
  const m = raw as Partial<BackupManifest>;
  if (m?.format !== 'container-volumes-backup' || m.version !== 1) throw invalid('unknown manifest format or version');
  if (!Array.isArray(m.volumes)) throw invalid('the manifest has no volume list');
  const volumes = m.volumes.map((v: unknown, i) => {
    const { path: p, mode, volumeId } = (v ?? {}) as Record<string, unknown>;
    let clean: string;
    try {
      clean = normalizeVolumePath(p);
    } catch (error) {
      throw invalid(`volumes[${i}]: ${(error as Error).message}`);
    }
    if (clean !== p || (mode !== 'ro' && mode !== 'rw') || !isId(volumeId)) throw invalid(`volumes[${i}] is malformed`);
    return { path: clean, mode: mode as Mode, volumeId };
  });
  if (new Set(volumes.map((v) => v.path)).size !== volumes.length) throw invalid('two volumes share a path');
  return { ...(m as BackupManifest), volumes };
}

/** Why a first 512-byte block is not that of an uncompressed POSIX tar archive, naming a compressor if it is one; undefined if it is. */
export function notTarReason(header: Buffer): string | undefined {
  if (header.toString('latin1', 257, 262) === 'ustar') return undefined;
  const compressed = COMPRESSED.find(([, magic]) => magic.every((byte, i) => header[i] === byte));
  return compressed ? `it is compressed (${compressed[0]}): decompress it first` : 'it is not an uncompressed POSIX tar archive';
}

/** The magic numbers of the compressors whose output a backup may be mistaken for. */
const COMPRESSED: [string, number[]][] = [
  ['gzip', [0x1f, 0x8b]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
];

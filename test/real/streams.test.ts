import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { ContainerVolumesError, HandlerError, type ContainerInfo, type Progress } from '../../src/index.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { realWorld } from '../helpers/real-world.js';
import { describeTree, populateTree } from '../helpers/tree.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * backup into a stream and restore from one: the same archive as the file forms, and
 * a stream that breaks, ends early or is aborted leaves no container and no volume on
 * the restoring side, and no handler container on the backing-up side.
 */

jest.setTimeout(120_000);

const MiB = 1024 * 1024;
let base: string;

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('streams-');
});

afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

async function dbWorld() {
  const w = realWorld(base);
  const db = await w.runtime.create({ rootfs: w.rootfs('db'), volumes: ['/data', '/data/nested', '/logs'] });
  const at = (container: ContainerInfo, p: string) => w.volumeDir(container.volumes.find((v) => v.path === p)!.volumeId);
  populateTree(at(db, '/data'));
  await fsp.writeFile(path.join(at(db, '/data/nested'), 'inner'), 'nested\n');
  await fsp.writeFile(path.join(at(db, '/logs'), 'big'), randomBytes(4 * MiB));
  return { ...w, db, at };
}
type World = Awaited<ReturnType<typeof dbWorld>>;

/** The three volumes of `container`, as a copy must reproduce them. */
function volumesOf(w: World, container: ContainerInfo) {
  return {
    '/data': describeTree(w.at(container, '/data'), { skip: ['nested'] }),
    '/data/nested': describeTree(w.at(container, '/data/nested')),
    '/logs': describeTree(w.at(container, '/logs')),
  };
}

/** The store holds exactly `containerIds` and their volumes, and nothing is mounted. */
async function expectOnly(w: World, containerIds: readonly string[]): Promise<void> {
  const containers = await w.runtime.list();
  expect(containers.map((c) => c.id).sort()).toEqual([...containerIds].sort());
  const volumeIds = new Set(containers.flatMap((c) => c.volumes.map((v) => v.volumeId)));
  expect((await fsp.readdir(path.join(w.root, 'volumes'))).sort()).toEqual([...volumeIds].sort());
  expect(mountsUnder(w.dir)).toEqual([]);
}

/** A Readable of `bytes` that fails with `error` after `after` bytes. */
function failingAfter(bytes: Buffer, after: number, error: Error): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (!sent) {
        sent = true;
        this.push(bytes.subarray(0, after));
        setTimeout(() => this.destroy(error), 20);
      }
    },
  });
}

describe('backup into a stream, restore from a stream', () => {
  test('piped into each other: every file, mode, owner, link, hard link, ACL and sparse file comes back; progress on both ends', async () => {
    const w = await dbWorld();
    const pipe = new PassThrough();
    const sent: Progress[] = [];
    const received: Progress[] = [];
    const [result, restored] = await Promise.all([
      w.runtime.backup(w.db.id, pipe, { onProgress: (p) => sent.push(p) }),
      w.runtime.restore(pipe, { rootfs: w.rootfs('restored'), onProgress: (p) => received.push(p) }),
    ]);
    expect(result.volumes.map((v) => v.path).sort()).toEqual(['/data', '/data/nested', '/logs']);
    expect(restored.volumes.map((v) => v.path).sort()).toEqual(['/data', '/data/nested', '/logs']);
    expect(volumesOf(w, restored)).toEqual(volumesOf(w, w.db));
    expect(describeTree(w.at(restored, '/data'))['sparse.img']).toMatchObject({ sparse: true, size: 16 * MiB });
    for (const progress of [sent, received]) {
      expect(progress.length).toBeGreaterThan(1);
      expect(progress.map((p) => p.bytesDone)).toEqual([...progress.map((p) => p.bytesDone)].sort((a, b) => a - b));
      expect(progress.at(-1)!.bytesDone).toBe(progress.at(-1)!.bytesTotal);
    }
    expect(sent.at(-1)!.bytesDone).toBeGreaterThan(4 * MiB);
    expect(received.at(-1)!.bytesDone).toBe(sent.at(-1)!.bytesDone);
    expect(pipe.writableEnded).toBe(true);
    await expectOnly(w, [w.db.id, restored.id]);
  });

  test('the stream holds the same archive as the file form: a file backup restores from a stream of it, and a streamed one from a file', async () => {
    const w = await dbWorld();
    const file = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, file);
    const fromStream = await w.runtime.restore(fs.createReadStream(file), { rootfs: w.rootfs('from-stream') });
    const streamed = path.join(w.dir, 'streamed.tar');
    await w.runtime.backup(w.db.id, fs.createWriteStream(streamed));
    expect(execFileSync('tar', ['--list', `--file=${streamed}`], { encoding: 'utf8' }).split('\n')[0]).toBe('container-volumes-backup.json');
    const fromFile = await w.runtime.restore(streamed, { rootfs: w.rootfs('from-file') });
    expect(volumesOf(w, fromStream)).toEqual(volumesOf(w, w.db));
    expect(volumesOf(w, fromFile)).toEqual(volumesOf(w, w.db));
    await expectOnly(w, [w.db.id, fromStream.id, fromFile.id]);
  });
});

describe('a stream that breaks leaves nothing on the restoring side', () => {
  test('a source that errors midway: ERR_HANDLER_FAILED with its error, no container, no volume', async () => {
    const w = await dbWorld();
    const file = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, file);
    const archive = await fsp.readFile(file);
    const error = await expectCode(w.runtime.restore(failingAfter(archive, 2 * MiB, new Error('connection reset by peer')), { rootfs: w.rootfs('r') }), 'ERR_HANDLER_FAILED');
    expect(error.message).toContain('connection reset by peer');
    await expectOnly(w, [w.db.id]);
  });

  test('a stream cut exactly at a member boundary (tar alone would call it complete): ERR_INVALID_ARCHIVE, nothing left', async () => {
    const w = await dbWorld();
    const file = path.join(w.dir, 'db.tar');
    await w.runtime.backup(w.db.id, file);
    const archive = await fsp.readFile(file);
    // The header block of the last member: everything before it is whole members.
    const listing = execFileSync('tar', ['--list', '--block-number', `--file=${file}`], { encoding: 'utf8' }).trim().split('\n');
    const lastHeader = Number(/^block (\d+):/.exec(listing.at(-1)!)![1]);
    const cut = archive.subarray(0, lastHeader * 512);
    expect(execFileSync('tar', ['--list', '--file=-'], { input: cut, encoding: 'utf8' })).toBeTruthy();
    const error = await expectCode(w.runtime.restore(Readable.from([cut]), { rootfs: w.rootfs('r') }), 'ERR_INVALID_ARCHIVE');
    expect(error.message).toMatch(/end-of-archive/);
    await expectOnly(w, [w.db.id]);
  });

  test('aborted while reading the stream: ERR_HANDLER_ABORTED, nothing left', async () => {
    const w = await dbWorld();
    const pipe = new PassThrough();
    const controller = new AbortController();
    const backingUp = w.runtime.backup(w.db.id, pipe).catch((e: unknown) => e);
    await expectCode(w.runtime.restore(pipe, { rootfs: w.rootfs('r'), signal: controller.signal, onProgress: () => controller.abort() }), 'ERR_HANDLER_ABORTED');
    // The backup side sees its reader go away: a coded error too, and no handler container.
    expect(await backingUp).toBeInstanceOf(ContainerVolumesError);
    await expectOnly(w, [w.db.id]);
  });

  test('what a failed backup wrote never restores: the stream is destroyed, not ended, and lacks the end-of-archive marker', async () => {
    const w = await dbWorld();
    const pipe = new PassThrough();
    const chunks: Buffer[] = [];
    pipe.on('data', (c: Buffer) => chunks.push(c));
    const controller = new AbortController();
    let seen = 0;
    const error = await expectCode(
      w.runtime.backup(w.db.id, pipe, { signal: controller.signal, onProgress: ({ bytesDone }) => (bytesDone > 2 * MiB && seen++ === 0 ? controller.abort() : undefined) }),
      'ERR_HANDLER_ABORTED',
    );
    expect(error).toBeInstanceOf(HandlerError);
    expect(pipe.destroyed).toBe(true);
    expect(pipe.writableEnded).toBe(false);
    const written = Buffer.concat(chunks);
    expect(written.length).toBeGreaterThan(0);
    // Cut inside a member, tar says so; at a member's end, the missing marker does.
    const restoring = await w.runtime.restore(Readable.from([written]), { rootfs: w.rootfs('r') }).catch((e: unknown) => e);
    expect((restoring as ContainerVolumesError).code).toMatch(/^ERR_(INVALID_ARCHIVE|HANDLER_FAILED)$/);
    await expectOnly(w, [w.db.id]);
  });

  test('a destination whose reader goes away (destroyed without an error): ERR_HANDLER_FAILED, no handler container left', async () => {
    const w = await dbWorld();
    const pipe = new PassThrough();
    let read = 0;
    pipe.on('data', (c: Buffer) => {
      read += c.length;
      if (read > MiB) pipe.destroy();
    });
    const error = await expectCode(w.runtime.backup(w.db.id, pipe), 'ERR_HANDLER_FAILED');
    expect(error.message).toMatch(/closed before the archive was complete/);
    await expectOnly(w, [w.db.id]);
  });

  test('a destination stream that fails: ERR_HANDLER_FAILED with its error, no handler container left', async () => {
    const w = await dbWorld();
    let written = 0;
    const failing = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        written += chunk.length;
        callback(written > MiB ? new Error('no space left on the upload') : null);
      },
    });
    failing.on('error', () => undefined);
    const error = await expectCode(w.runtime.backup(w.db.id, failing), 'ERR_HANDLER_FAILED');
    expect(error.message).toContain('no space left on the upload');
    await expectOnly(w, [w.db.id]);
  });
});

describe('bad streams: a coded error, nothing created', () => {
  const cases: [string, string, (w: World) => Promise<unknown>][] = [
    ['restore from random bytes', 'ERR_INVALID_ARCHIVE', (w) => w.runtime.restore(Readable.from([randomBytes(64 * 1024)]), { rootfs: w.rootfs('r') })],
    ['restore from an empty stream', 'ERR_INVALID_ARCHIVE', (w) => w.runtime.restore(Readable.from([]), { rootfs: w.rootfs('r') })],
    ['restore from a gzip stream', 'ERR_INVALID_ARCHIVE', (w) => w.runtime.restore(Readable.from([Buffer.from([0x1f, 0x8b, 8, 0, ...randomBytes(600)])]), { rootfs: w.rootfs('r') })],
    ['restore from a stream that fails at once', 'ERR_INVALID_ARCHIVE', (w) => w.runtime.restore(failingAfter(Buffer.alloc(0), 0, new Error('refused')), { rootfs: w.rootfs('r') })],
    ['restore from a stream without rootfs', 'ERR_INVALID_ROOTFS', async (w) => w.runtime.restore(fs.createReadStream(await backupFile(w)), { rootfs: path.join(w.dir, 'nope') })],
    ['restore from an object that is no stream', 'ERR_INVALID_ARGUMENT', (w) => (w.runtime.restore as (s: unknown, o: unknown) => Promise<unknown>)({ read: 1 }, { rootfs: w.rootfs('r') })],
    ['backup into an ended stream', 'ERR_INVALID_ARGUMENT', (w) => {
      const ended = new PassThrough();
      ended.end();
      return w.runtime.backup(w.db.id, ended);
    }],
    ['backup into a destroyed stream', 'ERR_INVALID_ARGUMENT', (w) => {
      const destroyed = new PassThrough();
      destroyed.destroy();
      return w.runtime.backup(w.db.id, destroyed);
    }],
    ['backup into a stream with a bad option', 'ERR_INVALID_ARGUMENT', (w) => (w.runtime.backup as (...a: unknown[]) => Promise<unknown>)(w.db.id, new PassThrough(), { gzip: true })],
  ];
  async function backupFile(w: World): Promise<string> {
    const file = path.join(w.dir, 'good.tar');
    if (!fs.existsSync(file)) await w.runtime.backup(w.db.id, file);
    return file;
  }
  test.each(cases)('%s: %s', async (_name, code, call) => {
    const w = await dbWorld();
    await backupFile(w);
    const before = await snapshotTree(w.root);
    await expectCode(call(w), code);
    expect(await snapshotTree(w.root)).toEqual(before);
    await expectOnly(w, [w.db.id]);
  });
});

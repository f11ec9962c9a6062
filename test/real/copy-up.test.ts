import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { cleanupTemp, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountTable, unmountAllUnder } from '../helpers/mounts.js';
import { startSwapper } from '../helpers/swapper.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Copy-up with real file systems: what `cp -a` keeps must survive the confinement that
 * stops it from reading outside the rootfs, and a subdirectory swapped for a symlink to
 * the host while the copy runs must never bring a host file into the new volume.
 */

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('copy-up-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

function world() {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const rootfs = path.join(dir, 'rootfs');
  fs.mkdirSync(rootfs);
  return { dir, root, rootfs, runtime: new ContainerRuntime({ root, mounter: new BindMounter() }) };
}

const run = (command: string, args: string[]) => execFileSync(command, args, { encoding: 'utf8' });
/** Every extended attribute of `file` (not following a symlink), as getfattr dumps them. */
const xattrs = (file: string) => run('getfattr', ['--absolute-names', '--no-dereference', '--dump', '--match=-', '--', file]).split('\n').slice(1).join('\n');
const acl = (file: string) => run('getfacl', ['--absolute-names', '--omit-header', '--', file]);

describe('copy-up keeps what cp -a keeps', () => {
  test('ownership, modes, timestamps, symlinks as links, hard links, sparse files, devices, fifos, every xattr namespace and ACLs', async () => {
    const w = world();
    const data = path.join(w.rootfs, 'data');
    const at = (name: string) => path.join(data, name);
    fs.mkdirSync(at('sub/deeper'), { recursive: true });
    fs.writeFileSync(at('file'), 'content\n');
    fs.chownSync(at('file'), 999, 998);
    fs.chmodSync(at('file'), 0o4750);
    fs.linkSync(at('file'), at('sub/hard-link'));
    fs.symlinkSync('/etc/passwd', at('absolute-link'));
    fs.symlinkSync('../file', at('sub/relative-link'));
    fs.symlinkSync('/nowhere', at('dangling-link'));
    const sparse = fs.openSync(at('sparse'), 'w');
    fs.ftruncateSync(sparse, 64 * 1024 * 1024);
    fs.writeSync(sparse, 'middle', 32 * 1024 * 1024);
    fs.closeSync(sparse);
    run('mkfifo', [at('fifo')]);
    run('mknod', [at('null'), 'c', '1', '3']);
    for (const [name, value] of [['user.app', 'u'], ['trusted.overlay.opaque', 'y'], ['security.custom', 's']]) {
      run('setfattr', ['--name', name, '--value', value, at('file')]);
    }
    run('setfattr', ['--no-dereference', '--name', 'trusted.on-link', '--value', 'l', at('absolute-link')]);
    run('setfacl', ['--modify', 'u:123:rwx', at('file')]);
    run('setfacl', ['--default', '--modify', 'u:55:rx', at('sub')]);
    fs.chownSync(at('sub/deeper'), 1000, 1000);
    fs.chmodSync(data, 0o710);
    fs.chownSync(data, 70, 70);
    for (const name of ['file', 'sub/deeper', 'sub', '.']) fs.utimesSync(at(name), new Date('2001-02-03T04:05:06Z'), new Date('2002-03-04T05:06:07Z'));
    fs.lutimesSync(at('absolute-link'), new Date('2003-01-01T00:00:00Z'), new Date('2003-01-01T00:00:00Z'));

    const c = await w.runtime.create({ rootfs: w.rootfs, volumes: ['/data'] });
    const volume = path.join(w.root, 'volumes', c.volumes[0]!.volumeId);
    const inVolume = (name: string) => path.join(volume, name);

    const stats = (p: string) => {
      const s = fs.lstatSync(p);
      return { mode: s.mode.toString(8), uid: s.uid, gid: s.gid, mtime: s.mtimeMs, rdev: s.rdev, size: s.size };
    };
    for (const name of ['.', 'file', 'sub', 'sub/deeper', 'absolute-link', 'fifo', 'null', 'sparse']) {
      expect({ name, ...stats(inVolume(name)) }).toEqual({ name, ...stats(at(name)) });
    }
    // snapshotTree reads every file: the fifo would block it.
    for (const dir of [data, volume]) fs.unlinkSync(path.join(dir, 'fifo'));
    expect(await snapshotTree(volume)).toEqual(await snapshotTree(data));
    expect(fs.statSync(inVolume('sub/hard-link')).ino).toBe(fs.statSync(inVolume('file')).ino);
    expect(fs.readlinkSync(inVolume('absolute-link'))).toBe('/etc/passwd');
    expect(fs.statSync(inVolume('sparse')).blocks * 512).toBeLessThan(1024 * 1024);
    expect(xattrs(inVolume('file'))).toBe(xattrs(at('file')));
    expect(xattrs(inVolume('file'))).toMatch(/security\.custom="s"[\s\S]*trusted\.overlay\.opaque="y"[\s\S]*user\.app="u"/);
    expect(xattrs(inVolume('absolute-link'))).toMatch(/trusted\.on-link="l"/);
    expect(acl(inVolume('file'))).toBe(acl(at('file')));
    expect(acl(inVolume('sub'))).toBe(acl(at('sub')));
    expect(acl(inVolume('sub'))).toMatch(/default:user:55:r-x/);
  });

  test('the copy leaves no mount behind, in this namespace or any it can see', async () => {
    const w = world();
    fs.mkdirSync(path.join(w.rootfs, 'data/sub'), { recursive: true });
    fs.writeFileSync(path.join(w.rootfs, 'data/sub/f'), 'x');
    const before = mountTable().map((m) => `${m.mountPoint} ← ${m.root}`);
    await w.runtime.create({ rootfs: w.rootfs, volumes: ['/data'] });
    expect(mountTable().map((m) => `${m.mountPoint} ← ${m.root}`)).toEqual(before);
  });
});

describe('a subdirectory swapped with a symlink to a root-only host directory while copy-ups run in a loop', () => {
  const ATTEMPTS = 1000;
  const SECRET = 'host secret: never in a volume\n';
  const result = { attempts: 0, copied: 0, volumesWithHostFiles: 0, refused: {} as Record<string, number>, hostFiles: [] as string[], otherErrors: [] as string[] };

  /** Every regular file in `dir` (no symlink followed) whose content is the host's secret. */
  const hostFilesIn = (dir: string): string[] => {
    const found: string[] = [];
    const walk = (current: string) => {
      for (const entry of fs.readdirSync(current, { withFileTypes: true })) {
        const full = path.join(current, entry.name);
        if (entry.isDirectory()) walk(full);
        else if (entry.isFile() && fs.readFileSync(full, 'utf8') === SECRET) found.push(path.relative(dir, full));
      }
    };
    walk(dir);
    return found;
  };

  beforeAll(async () => {
    const w = world();
    // The host's directory: root-only, its file 0600, with the names the rootfs has too.
    const host = path.join(w.dir, 'host-only');
    fs.mkdirSync(host, { mode: 0o700 });
    const sub = path.join(w.rootfs, 'data/sub');
    fs.mkdirSync(path.join(sub, 'nested'), { recursive: true });
    for (let i = 0; i < 40; i++) {
      fs.writeFileSync(path.join(sub, `file-${i}`), `image file ${i}\n`);
      fs.writeFileSync(path.join(host, `file-${i}`), SECRET, { mode: 0o600 });
    }
    fs.writeFileSync(path.join(w.rootfs, 'data/top'), 'top\n');
    fs.symlinkSync(host, path.join(w.rootfs, 'data/sub.link'));
    const hostBefore = await snapshotTree(host);
    const mountsBefore = mountTable().map((m) => `${m.mountPoint} ← ${m.root}`);

    const swapper = await startSwapper(path.join(w.rootfs, 'data'), 'sub', 'sub.link', w.dir);
    const started = Date.now();
    try {
      for (; result.attempts < ATTEMPTS; result.attempts++) {
        // create and createVolumes in turn: both copy up.
        let id: string | undefined;
        try {
          if (result.attempts % 2 === 0) {
            id = (await w.runtime.create({ rootfs: w.rootfs, volumes: ['/data'] })).id;
          } else {
            id = (await w.runtime.create({ rootfs: w.rootfs })).id;
            await w.runtime.createVolumes(id, ['/data']);
          }
          const made = (await w.runtime.get(id)).volumes;
          if (made.length === 1) {
            result.copied++;
            const volume = path.join(w.root, 'volumes', made[0]!.volumeId);
            const found = hostFilesIn(volume);
            if (found.length > 0) result.volumesWithHostFiles++;
            result.hostFiles.push(...found.map((f) => `attempt ${result.attempts}: ${f}`));
          }
        } catch (error) {
          const code = (error as { code?: string }).code;
          if (code) result.refused[code] = (result.refused[code] ?? 0) + 1;
          else result.otherErrors.push(String(error));
        }
        if (id) await w.runtime.remove(id, { volumes: true });
      }
    } finally {
      const counts = await swapper.stop();
      console.log(
        `copy-up race (${swapper.kind} swapper): ${result.attempts} attempts in ${Date.now() - started} ms: ${result.copied} copies completed, ` +
          `refused ${JSON.stringify(result.refused)}, ${result.hostFiles.length} host files found in ${result.volumesWithHostFiles} volumes, ${result.otherErrors.length} uncoded errors; ` +
          `swapper: ${counts.swaps} swaps, ${counts.busy} busy, ${counts.other} other failures`,
      );
    }
    expect(await snapshotTree(host)).toEqual(hostBefore);
    expect(mountTable().map((m) => `${m.mountPoint} ← ${m.root}`)).toEqual(mountsBefore);
    expect(fs.readdirSync(path.join(w.root, 'volumes'))).toEqual([]);
  }, 600_000);

  test('no host file ever lands in a volume', () => {
    expect(result.attempts).toBe(ATTEMPTS);
    expect({ count: result.hostFiles.length, first: result.hostFiles.slice(0, 5) }).toEqual({ count: 0, first: [] });
  });

  test('copies still complete, and every refusal is coded', () => {
    expect(result.copied).toBeGreaterThan(0);
    expect(result.otherErrors).toEqual([]);
    expect(Object.keys(result.refused).filter((code) => code !== 'ERR_PATH_ESCAPES_ROOTFS' && code !== 'ERR_COPY_UP_FAILED')).toEqual([]);
  });
});

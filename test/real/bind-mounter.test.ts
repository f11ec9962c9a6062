import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, MountCommandError } from '../../src/index.js';
import { mounterContract } from '../../src/testing.js';
import { cleanupTemp, expectCode, tempDir } from '../helpers/fixtures.js';
import { logSpawns, mountsUnder, tenVolumeRequests, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/** The engine CONTAINER_VOLUMES_MOUNT_ENGINE picks (test/run.mjs runs the suite once per engine), else the default. */
const mounter = new BindMounter();
/** For the tests of util-linux's commands themselves. */
const utilLinux = new BindMounter({ engine: 'util-linux' });
let base: string;

beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('bind-');
});
afterAll(async () => {
  // Whatever a failed test left mounted goes before the directories do.
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

async function dirs(): Promise<{ rootfs: string; source: string; outside: string }> {
  const dir = await fs.promises.mkdtemp(path.join(base, 'case-'));
  const [rootfs, source, outside] = ['rootfs', 'source', 'outside'].map((d) => path.join(dir, d)) as [string, string, string];
  for (const d of [rootfs, source, outside]) fs.mkdirSync(d);
  fs.writeFileSync(path.join(source, 'marker'), 'volume data');
  return { rootfs, source, outside };
}

describe(`Mounter contract: BindMounter (${mounter.engine} engine)`, () => {
  for (const contractCase of mounterContract) {
    test(contractCase.name, async () => {
      const dir = await fs.promises.mkdtemp(path.join(base, 'contract-'));
      let n = 0;
      const make = async () => {
        const d = path.join(dir, String(n++));
        fs.mkdirSync(d);
        return d;
      };
      await contractCase.run({ mounter, makeRootfs: make, makeSource: make });
    });
  }
});

describe('BindMounter: what a process sees', () => {
  test('files of the volume are visible through the rootfs, with nosuid,nodev and private propagation', async () => {
    const { rootfs, source } = await dirs();
    await mounter.mount({ source, rootfs, path: '/var/lib/db', mode: 'rw' });
    expect(fs.readFileSync(path.join(rootfs, 'var/lib/db/marker'), 'utf8')).toBe('volume data');
    fs.writeFileSync(path.join(rootfs, 'var/lib/db/new'), 'written inside');
    expect(fs.readFileSync(path.join(source, 'new'), 'utf8')).toBe('written inside');
    const [line] = mountsUnder(path.join(rootfs, 'var/lib/db'));
    expect(line?.root).toBe(source);
    expect(line?.options).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev']));
    expect(line?.optional).toEqual([]);
    await mounter.unmount({ rootfs, path: '/var/lib/db' });
    expect(mountsUnder(rootfs)).toEqual([]);
    expect(fs.readdirSync(path.join(rootfs, 'var/lib/db'))).toEqual([]);
  });

  test('on a shared rootfs (systemd makes / shared), peers and slaves only ever get the read-only, nosuid, nodev mount, and lose it on unmount', async () => {
    const { rootfs, source, outside } = await dirs();
    const peer = path.join(outside, 'peer');
    const slave = path.join(outside, 'slave');
    fs.mkdirSync(peer);
    fs.mkdirSync(slave);
    execFileSync('mount', ['--bind', rootfs, rootfs]);
    execFileSync('mount', ['--make-shared', rootfs]);
    execFileSync('mount', ['--bind', rootfs, peer]);
    execFileSync('mount', ['--bind', rootfs, slave]);
    execFileSync('mount', ['--make-slave', slave]);
    try {
      await mounter.mountAll([
        { source, rootfs, path: '/data', mode: 'ro' },
        { source, rootfs, path: '/data/inner', mode: 'rw' },
      ]);
      for (const view of [rootfs, peer, slave]) {
        const lines = mountsUnder(path.join(view, 'data'));
        expect(lines.map((l) => [l.mountPoint, l.options.includes('ro') ? 'ro' : 'rw'])).toEqual([
          [path.join(view, 'data'), 'ro'],
          [path.join(view, 'data/inner'), 'rw'],
        ]);
        for (const l of lines) expect(l.options).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
        expect(fs.readFileSync(path.join(view, 'data/marker'), 'utf8')).toBe('volume data');
        expect(() => fs.writeFileSync(path.join(view, 'data/x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
      }
      await mounter.unmountAll([
        { rootfs, path: '/data/inner' },
        { rootfs, path: '/data' },
      ]);
      for (const view of [rootfs, peer, slave]) expect(mountsUnder(path.join(view, 'data'))).toEqual([]);
      const staging = '/run/container-volumes/staging';
      expect(fs.existsSync(staging) ? fs.readdirSync(staging).filter((d) => d.startsWith(`${process.pid}-`)) : []).toEqual([]);
    } finally {
      for (const dir of [slave, peer, rootfs]) unmountAllUnder(dir);
    }
  });

  test('a read-only mount refuses writes with EROFS while the volume stays writable on the host', async () => {
    const { rootfs, source } = await dirs();
    await mounter.mount({ source, rootfs, path: '/data', mode: 'ro' });
    expect(() => fs.writeFileSync(path.join(rootfs, 'data/x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    fs.writeFileSync(path.join(source, 'from-host'), 'ok');
    expect(fs.readFileSync(path.join(rootfs, 'data/from-host'), 'utf8')).toBe('ok');
    expect(mountsUnder(path.join(rootfs, 'data'))[0]?.options).toContain('ro');
    await mounter.unmount({ rootfs, path: '/data' });
  });

  test('a read-only remount that does not take is detected in mountinfo and rolled back', async () => {
    const { rootfs, source } = await dirs();
    // A `mount` on PATH that quietly turns the read-only remount into a read-write one.
    const bin = path.join(path.dirname(rootfs), 'bin');
    fs.mkdirSync(bin);
    fs.writeFileSync(
      path.join(bin, 'mount'),
      // The options are in the generated fstab that follows -T: rewrite a copy of it.
      '#!/bin/bash\nargs=()\nnext=\nfor a in "$@"; do\n  if [ -n "$next" ]; then t=$(mktemp); sed "s/,ro,/,rw,/" "$a" > "$t"; a=$t; next=; fi\n  [ "$a" = -T ] && next=1\n  args+=("$a")\ndone\nexec /usr/bin/mount "${args[@]}"\n',
      { mode: 0o755 },
    );
    const savedPath = process.env.PATH;
    process.env.PATH = `${bin}:${savedPath}`;
    try {
      const error = await expectCode(utilLinux.mount({ source, rootfs, path: '/data', mode: 'ro' }), 'ERR_MOUNT_FAILED');
      expect(error.message).toMatch(/does not show ro/);
    } finally {
      process.env.PATH = savedPath;
    }
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a failing mount command is reported with its command line, exit code and output, and leaves nothing', async () => {
    const { rootfs, source } = await dirs();
    const bin = path.join(path.dirname(rootfs), 'bin');
    fs.mkdirSync(bin);
    fs.writeFileSync(path.join(bin, 'mount'), '#!/bin/bash\necho "mount: simulated failure" >&2\nexit 32\n', { mode: 0o755 });
    const savedPath = process.env.PATH;
    process.env.PATH = `${bin}:${savedPath}`;
    let error: Error & { code: string };
    try {
      error = await expectCode(utilLinux.mount({ source, rootfs, path: '/data', mode: 'rw' }), 'ERR_MOUNT_FAILED');
    } finally {
      process.env.PATH = savedPath;
    }
    expect(error).toBeInstanceOf(MountCommandError);
    const failed = error as unknown as MountCommandError;
    expect(failed.command).toEqual(expect.arrayContaining(['mount', '-a', '-T']));
    expect(failed.exitCode).toBe(32);
    expect(failed.stderr).toContain('simulated failure');
    expect(error.message).toContain('/data');
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a missing volume directory is ERR_MOUNT_FAILED naming it, and leaves nothing', async () => {
    const { rootfs } = await dirs();
    const missing = path.join(base, 'no-such-volume');
    const error = await expectCode(mounter.mount({ source: missing, rootfs, path: '/data', mode: 'rw' }), 'ERR_MOUNT_FAILED');
    expect(error.message).toContain(missing);
    expect(error.message).toContain('/data');
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a 10-volume container is mounted by 2 processes and unmounted by 1, whatever the number of volumes', async () => {
    const { rootfs } = await dirs();
    const dir = path.dirname(rootfs);
    const requests = tenVolumeRequests(dir, rootfs);
    const { log, restore } = logSpawns(dir, ['mount', 'umount']);
    try {
      await utilLinux.mountAll(requests);
      expect(fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)).toEqual(['mount', 'mount']);
      for (let i = 0; i < 10; i++) expect(fs.readFileSync(path.join(rootfs, 'data', String(i), 'marker'), 'utf8')).toBe(`volume ${i}`);
      expect(mountsUnder(rootfs).map((m) => [m.mountPoint, m.options.includes('ro') ? 'ro' : 'rw'])).toEqual(
        requests.map((r) => [path.join(rootfs, r.path), r.mode]),
      );
      fs.writeFileSync(log, '');
      await utilLinux.unmountAll([...requests].reverse());
      expect(fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)).toEqual(['umount']);
    } finally {
      restore();
    }
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a failure at a nested level undoes the parent mounts made by the same call', async () => {
    const { rootfs, source } = await dirs();
    // Inside the parent volume, the child's mount point is a regular file.
    fs.writeFileSync(path.join(source, 'cache'), 'not a directory');
    const error = await expectCode(
      mounter.mountAll([
        { source, rootfs, path: '/srv', mode: 'ro' },
        { source, rootfs, path: '/srv/cache', mode: 'rw' },
      ]),
      'ERR_MOUNT_POINT_NOT_DIRECTORY',
    );
    expect(error.message).toContain('/srv/cache');
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a regular file on the path is ERR_MOUNT_POINT_NOT_DIRECTORY', async () => {
    const { rootfs, source } = await dirs();
    fs.writeFileSync(path.join(rootfs, 'data'), 'a file');
    await expectCode(mounter.mount({ source, rootfs, path: '/data', mode: 'rw' }), 'ERR_MOUNT_POINT_NOT_DIRECTORY');
    await expectCode(mounter.mount({ source, rootfs, path: '/data/below', mode: 'rw' }), 'ERR_MOUNT_POINT_NOT_DIRECTORY');
    expect(mountsUnder(rootfs)).toEqual([]);
  });
});

describe('BindMounter: symlinks never lead out of the rootfs', () => {
  test.each([
    ['the target itself', '/data', (rootfs: string, outside: string) => fs.symlinkSync(outside, path.join(rootfs, 'data')), (outside: string) => outside],
    ['a parent directory', '/var/lib/db', (rootfs: string, outside: string) => fs.symlinkSync(outside, path.join(rootfs, 'var')), (outside: string) => `${outside}/lib/db`],
    ['a relative link climbing with ..', '/a/b/data', (rootfs: string, outside: string) => {
      fs.mkdirSync(path.join(rootfs, 'a/b'), { recursive: true });
      fs.symlinkSync(`../../../../../../../../..${outside}`, path.join(rootfs, 'a/b/data'));
    }, (outside: string) => outside],
    ['a link that stays inside', '/data', (rootfs: string) => {
      fs.mkdirSync(path.join(rootfs, 'real'));
      fs.symlinkSync('real', path.join(rootfs, 'data'));
    }, () => '/real'],
  ])('a symlink as %s is followed inside the rootfs only: the mount lands there, nothing is mounted or created outside', async (_, target, plant, lands) => {
    const { rootfs, source, outside } = await dirs();
    plant(rootfs, outside);
    await mounter.mount({ source, rootfs, path: target, mode: 'ro' });
    const mounts = mountsUnder(rootfs);
    expect(mounts.map((m) => m.mountPoint)).toEqual([path.join(rootfs, lands(outside))]);
    expect(mounts[0]?.options).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    expect(mountsUnder(outside)).toEqual([]);
    expect(fs.readdirSync(outside)).toEqual([]);
    // Unmounted through the same path, links followed the same way.
    await mounter.unmount({ rootfs, path: target });
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test.each([
    ['a link to /', (rootfs: string) => fs.symlinkSync('/', path.join(rootfs, 'data')), 'ERR_INVALID_VOLUME_PATH'],
    ['a link to ..', (rootfs: string) => fs.symlinkSync('..', path.join(rootfs, 'data')), 'ERR_INVALID_VOLUME_PATH'],
    ['a link loop', (rootfs: string) => fs.symlinkSync('data', path.join(rootfs, 'data')), 'ERR_PATH_ESCAPES_ROOTFS'],
  ] as const)('a target that is %s cannot take a mount: a coded error, nothing mounted', async (_, plant, code) => {
    const { rootfs, source, outside } = await dirs();
    plant(rootfs);
    const error = await expectCode(mounter.mount({ source, rootfs, path: '/data', mode: 'rw' }), code);
    expect(error.message).toContain('/data');
    expect(mountsUnder(rootfs)).toEqual([]);
    expect(mountsUnder(outside)).toEqual([]);
    // Nothing to unmount there either: unmount is a no-op, not an error.
    await mounter.unmount({ rootfs, path: '/data' });
  });

  test('mountAll refuses two requests that are one directory through a link, and mounts neither', async () => {
    const { rootfs, source } = await dirs();
    fs.mkdirSync(path.join(rootfs, 'run'));
    fs.symlinkSync('run', path.join(rootfs, 'var-run'));
    const error = await expectCode(
      mounter.mountAll([
        { source, rootfs, path: '/run', mode: 'rw' },
        { source, rootfs, path: '/var-run', mode: 'ro' },
      ]),
      'ERR_DUPLICATE_MOUNT_POINT',
    );
    expect(error.message).toContain('/var-run');
    expect(mountsUnder(rootfs)).toEqual([]);
  });

  test('a rootfs replaced by a symlink after the fact is refused: nothing lands on the host', async () => {
    const { rootfs, source, outside } = await dirs();
    fs.renameSync(rootfs, `${rootfs}.old`);
    fs.symlinkSync(outside, rootfs);
    await expectCode(mounter.mount({ source, rootfs, path: '/data', mode: 'rw' }), 'ERR_INVALID_ROOTFS');
    expect(fs.readdirSync(outside)).toEqual([]);
    execFileSync('mount', ['--bind', source, outside]);
    await expectCode(mounter.unmount({ rootfs, path: '/' + path.basename(outside) }), 'ERR_INVALID_ROOTFS');
    expect(mountsUnder(outside).map((m) => m.mountPoint)).toEqual([outside]);
    execFileSync('umount', [outside]);
  });

  test('unmount through a symlink never touches a mount outside the rootfs', async () => {
    const { rootfs, source, outside } = await dirs();
    execFileSync('mount', ['--bind', source, outside]);
    fs.symlinkSync(outside, path.join(rootfs, 'data'));
    await mounter.unmount({ rootfs, path: '/data' });
    expect(mountsUnder(outside).map((m) => m.mountPoint)).toEqual([outside]);
    execFileSync('umount', [outside]);
  });
});

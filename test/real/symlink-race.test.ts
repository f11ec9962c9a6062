import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { mountTable, mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { startSwapper } from '../helpers/swapper.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * runc's CVE-2021-30465 class: a symlink in the rootfs must never make a volume mount
 * land outside it, whether it is there from the start (it is then followed inside the
 * rootfs, as Docker does) or swapped in while the library resolves the path. Everything goes through ContainerRuntime with the
 * real BindMounter; the decoy is a host directory the symlinks point at.
 */

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('symlink-race-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** Every mount as "mount point ← source root": compared whole, so any new mount shows. */
const allMounts = () => mountTable().map((m) => `${m.mountPoint} ← ${m.root}`);

interface World {
  dir: string;
  root: string;
  /** A host directory outside every rootfs, with content of its own. */
  decoy: string;
  runtime: ContainerRuntime;
  rootfs(name: string): string;
}

function world(): World {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const decoy = path.join(dir, 'decoy');
  fs.mkdirSync(path.join(decoy, 'lib/db'), { recursive: true });
  fs.writeFileSync(path.join(decoy, 'host-file'), 'host data\n');
  const root = path.join(dir, 'state');
  return {
    dir,
    root,
    decoy,
    runtime: new ContainerRuntime({ root, mounter: new BindMounter() }),
    rootfs(name) {
      const p = path.join(dir, name);
      fs.mkdirSync(p);
      return p;
    },
  };
}

interface StaticCase {
  name: string;
  /** The volume path, chosen so that following the symlink would reach an existing host directory (or make one). */
  volumePath: (w: World) => string;
  /** Plants the symlink(s) in `rootfs`. */
  plant: (rootfs: string, w: World) => void;
  /** Where the volume lands inside the rootfs, links followed there and clamped to its root; null: the rootfs itself, which cannot take one. */
  lands: (w: World) => string | null;
  /** Host paths that must never come to exist (a link followed out of the rootfs would mkdir them). */
  neverCreated?: (w: World) => string[];
}

const link = (target: string, at: string) => {
  fs.mkdirSync(path.dirname(at), { recursive: true });
  fs.symlinkSync(target, at);
};

const staticCases: StaticCase[] = [
  { name: 'the target is an absolute link to a host directory', volumePath: () => '/data', plant: (r, w) => link(w.decoy, path.join(r, 'data')), lands: (w) => w.decoy },
  { name: 'a parent is an absolute link to a host directory', volumePath: () => '/var/lib/db', plant: (r, w) => link(w.decoy, path.join(r, 'var')), lands: (w) => `${w.decoy}/lib/db` },
  {
    name: 'the target is a relative link climbing out with ..',
    volumePath: () => '/a/b/data',
    plant: (r, w) => link(path.relative(path.join(r, 'a/b'), w.decoy), path.join(r, 'a/b/data')),
    lands: (w) => `/${path.basename(w.decoy)}`,
  },
  {
    name: 'a parent is a relative link climbing out with .. far past /',
    volumePath: () => '/a/lib/db',
    plant: (r, w) => link(`${'../'.repeat(40)}${w.decoy.slice(1)}`, path.join(r, 'a')),
    lands: (w) => `${w.decoy}/lib/db`,
  },
  { name: 'the target is a link to /', volumePath: () => '/data', plant: (r) => link('/', path.join(r, 'data')), lands: () => null },
  { name: 'a parent is a link to /', volumePath: (w) => `/host${w.decoy}`, plant: (r) => link('/', path.join(r, 'host')), lands: (w) => w.decoy },
  { name: 'the target is a link to ..', volumePath: () => '/data', plant: (r) => link('..', path.join(r, 'data')), lands: () => null },
  { name: 'a parent is a link to ..', volumePath: () => '/up/decoy', plant: (r) => link('..', path.join(r, 'up')), lands: () => '/decoy' },
  {
    name: 'a chain of links: one inside the rootfs, then one on the host, then the decoy',
    volumePath: () => '/data',
    plant: (r, w) => {
      const hop = path.join(w.dir, 'hop-at');
      if (!fs.existsSync(hop)) fs.symlinkSync(w.decoy, hop);
      link(hop, path.join(r, 'hop'));
      link('hop', path.join(r, 'data'));
    },
    // The second link's target is a host path: inside the rootfs it names a directory that does not exist yet.
    lands: (w) => path.join(w.dir, 'hop-at'),
  },
  {
    name: 'the target is a dangling link to a host path that does not exist yet',
    volumePath: () => '/data',
    plant: (r, w) => link(path.join(w.dir, 'made-by-mount'), path.join(r, 'data')),
    lands: (w) => path.join(w.dir, 'made-by-mount'),
    neverCreated: (w) => [path.join(w.dir, 'made-by-mount')],
  },
  {
    name: 'a parent is a dangling link to a host path that does not exist yet',
    volumePath: () => '/var/lib/db',
    plant: (r, w) => link(path.join(w.dir, 'made-by-mkdir'), path.join(r, 'var')),
    lands: (w) => path.join(w.dir, 'made-by-mkdir/lib/db'),
    neverCreated: (w) => [path.join(w.dir, 'made-by-mkdir')],
  },
];

describe('a symlink on the volume path is followed inside the rootfs only, and nothing lands outside it', () => {
  test.each(staticCases)('$name: create, createVolumes and mount all put the volume where the link leads inside the rootfs', async ({ volumePath, plant, lands, neverCreated }) => {
    const w = world();
    const p = volumePath(w);
    const mountsBefore = allMounts();
    const decoyBefore = await snapshotTree(w.decoy);
    const at = lands(w);

    const check = async (rootfs: string, id: string) => {
      const volume = path.join(w.root, 'volumes', (await w.runtime.get(id)).volumes[0]!.volumeId);
      fs.writeFileSync(path.join(volume, 'marker'), 'volume data\n');
      if (at === null) {
        await expectCode(w.runtime.mount(id), 'ERR_INVALID_VOLUME_PATH');
        expect((await w.runtime.get(id)).mounted).toBe(false);
      } else {
        await w.runtime.mount(id);
        // The one new mount is inside the rootfs, at the landing place, and shows the volume.
        expect(mountsUnder(rootfs).map((m) => path.relative(rootfs, m.mountPoint))).toEqual([at.slice(1)]);
        expect(fs.readFileSync(path.join(rootfs, at, 'marker'), 'utf8')).toBe('volume data\n');
        expect(allMounts().filter((m) => !mountsBefore.includes(m))).toHaveLength(1);
        await w.runtime.unmount(id);
      }
      expect(allMounts()).toEqual(mountsBefore);
    };

    // Present at create.
    const atCreate = w.rootfs('at-create');
    plant(atCreate, w);
    if (at === null) {
      await expectCode(w.runtime.create({ rootfs: atCreate, volumes: [p] }), 'ERR_INVALID_VOLUME_PATH');
      expect(await w.runtime.list()).toEqual([]);
      expect(fs.readdirSync(path.join(w.root, 'volumes'))).toEqual([]);
    } else {
      await check(atCreate, (await w.runtime.create({ rootfs: atCreate, volumes: [p] })).id);
    }

    // Present when a volume is added to an existing container.
    const atAdd = w.rootfs('at-add');
    const bare = await w.runtime.create({ rootfs: atAdd });
    plant(atAdd, w);
    if (at === null) {
      await expectCode(w.runtime.createVolumes(bare.id, [p]), 'ERR_INVALID_VOLUME_PATH');
      expect((await w.runtime.get(bare.id)).volumes).toEqual([]);
    } else {
      await w.runtime.createVolumes(bare.id, [p]);
      await check(atAdd, bare.id);
    }

    // Planted after create, before mount.
    const atMount = w.rootfs('at-mount');
    const c = await w.runtime.create({ rootfs: atMount, volumes: [p] });
    plant(atMount, w);
    await check(atMount, c.id);

    expect(await snapshotTree(w.decoy)).toEqual(decoyBefore);
    for (const host of neverCreated?.(w) ?? []) expect({ host, exists: fs.existsSync(host) }).toEqual({ host, exists: false });
  });

  test.each([
    ['an absolute link to a host directory', (w: World) => w.decoy],
    ['a link to ..', () => '..'],
    ['a link to /', () => '/'],
  ])(
    'a nested mount point that the container turned into a symlink inside its parent volume (%s) is refused, and the parent is unmounted again',
    async (_, target) => {
      const w = world();
      const rootfs = w.rootfs('nested');
      const c = await w.runtime.create({ rootfs, volumes: ['/srv', '/srv/cache'] });
      const srv = path.join(w.root, 'volumes', c.volumes.find((v) => v.path === '/srv')!.volumeId);
      // What a process in the container could do through its own /srv.
      fs.symlinkSync(target(w), path.join(srv, 'cache'));
      const mountsBefore = allMounts();
      const decoyBefore = await snapshotTree(w.decoy);

      await expectCode(w.runtime.mount(c.id), 'ERR_PATH_ESCAPES_ROOTFS');
      expect(allMounts()).toEqual(mountsBefore);
      expect(await snapshotTree(w.decoy)).toEqual(decoyBefore);
      expect((await w.runtime.get(c.id)).mounted).toBe(false);

      // Refused for the symlink, not for anything else: with a directory there it mounts.
      fs.unlinkSync(path.join(srv, 'cache'));
      await w.runtime.mount(c.id);
      expect(mountsUnder(rootfs).map((m) => path.relative(rootfs, m.mountPoint))).toEqual(['srv', 'srv/cache']);
      await w.runtime.unmount(c.id);
      expect(mountsUnder(rootfs)).toEqual([]);
    },
  );
});

interface RaceVariant {
  what: string;
  /** 3000 in all, in about two minutes on 2 cores. */
  attempts: number;
  volumePath: string;
  /** The rootfs entry the swapper exchanges with a symlink to the decoy. */
  swapped: string;
  /** Where the volume would land on the host if the symlink were followed. */
  landing: (decoy: string) => string;
}

interface RaceResult {
  attempts: number;
  mounted: number;
  refused: Record<string, number>;
  unmountErrors: Record<string, number>;
  /** Mounts that appeared outside the rootfs at any scan. */
  escapes: string[];
  /** Scans of /proc/self/mountinfo and the decoy: one after every mount call, one after every unmount call. */
  scans: number;
  /** Scans at which the volume's marker file was visible in the decoy. */
  decoyHits: number;
  /** Mounts of the read-only volume seen, once a call had returned, without ro, nosuid or nodev. */
  weakMounts: string[];
  /** Mounts of the volume found after a refused mount / after an acknowledged unmount. */
  leftAfterRefusal: string[];
  leftAfterUnmount: string[];
}

const variants: RaceVariant[] = [
  { what: 'the target directory', attempts: 1500, volumePath: '/data', swapped: 'data', landing: (decoy) => decoy },
  { what: 'a parent directory', attempts: 1500, volumePath: '/var/lib/db', swapped: 'var', landing: (decoy) => path.join(decoy, 'lib/db') },
];

/** Generous: a hook that timed out would leave its loop running on into the next variant's. */
const RACE_HOOK_TIMEOUT_MS = 600_000;

const tallyInto = (into: Record<string, number>, error: unknown) => {
  const code = (error as { code?: string }).code ?? `no code: ${(error as Error).message}`;
  into[code] = (into[code] ?? 0) + 1;
};

describe.each(variants)('$what swapped with a symlink to the host by another process while mount and unmount run in a loop', (variant) => {
  const result: RaceResult = {
    attempts: 0,
    mounted: 0,
    refused: {},
    unmountErrors: {},
    escapes: [],
    scans: 0,
    decoyHits: 0,
    weakMounts: [],
    leftAfterRefusal: [],
    leftAfterUnmount: [],
  };

  beforeAll(async () => {
    const w = world();
    // The container under attack shares the volume read-only: a mount of it that is
    // writable (or lacks nosuid,nodev) in its rootfs would be a breach too.
    const source = await w.runtime.create({ rootfs: w.rootfs('source'), volumes: [variant.volumePath] });
    const rootfs = w.rootfs('rootfs');
    fs.mkdirSync(path.join(rootfs, variant.volumePath), { recursive: true });
    const c = await w.runtime.create({ rootfs, volumesFrom: [`${source.id}:ro`] });
    const volume = path.join(w.root, 'volumes', c.volumes[0]!.volumeId);
    fs.writeFileSync(path.join(volume, 'marker'), 'volume data\n');
    const marker = path.join(variant.landing(w.decoy), 'marker');
    const link = `${variant.swapped}.link`;
    fs.symlinkSync(w.decoy, path.join(rootfs, link));

    const baseline = new Set(allMounts());
    const ofVolume = () => mountTable().filter((m) => m.root === volume);
    const swapper = await startSwapper(rootfs, variant.swapped, link, w.dir);
    /** Detaches leftover mounts by the paths mountinfo gives them, with the swapper frozen so that those paths hold still. */
    const clear = async (into: string[]) => {
      await swapper.pause();
      for (const m of ofVolume().reverse()) {
        into.push(`attempt ${result.attempts}: ${path.relative(rootfs, m.mountPoint)} (${m.options.join(',')})`);
        execFileSync('umount', ['--lazy', m.mountPoint]);
      }
      swapper.resume();
    };
    const scan = () => {
      result.scans++;
      for (const line of allMounts()) if (!baseline.has(line) && !line.startsWith(`${rootfs}/`)) result.escapes.push(line);
      if (fs.existsSync(marker)) result.decoyHits++;
      for (const m of ofVolume()) {
        if (!['ro', 'nosuid', 'nodev'].every((o) => m.options.includes(o))) {
          result.weakMounts.push(`attempt ${result.attempts}: ${path.relative(rootfs, m.mountPoint)} (${m.options.join(',')})`);
        }
      }
    };

    const started = Date.now();
    try {
      for (; result.attempts < variant.attempts; result.attempts++) {
        let refused = false;
        try {
          await w.runtime.mount(c.id);
          result.mounted++;
        } catch (error) {
          tallyInto(result.refused, error);
          refused = true;
        }
        scan();
        if (refused && ofVolume().length > 0) await clear(result.leftAfterRefusal);
        await w.runtime.unmount(c.id).catch((error: unknown) => tallyInto(result.unmountErrors, error));
        scan();
        if (ofVolume().length > 0) await clear(result.leftAfterUnmount);
      }
    } finally {
      const counts = await swapper.stop();
      const refusedTotal = Object.values(result.refused).reduce((a, b) => a + b, 0);
      console.log(
        `symlink race on ${variant.what} (${variant.volumePath}, shared :ro, ${swapper.kind} swapper): ` +
          `${result.attempts} attempts in ${Date.now() - started} ms: ${result.mounted} mounted, ` +
          `${refusedTotal} refused (${((100 * refusedTotal) / Math.max(1, result.attempts)).toFixed(1)}%: ${JSON.stringify(result.refused)}); ` +
          `unmount errors ${JSON.stringify(result.unmountErrors)}; ${result.scans} scans: ${result.escapes.length} escapes, ${result.decoyHits} decoy hits, ` +
          `${result.weakMounts.length} mounts seen without ro,nosuid,nodev; ` +
          `${result.leftAfterRefusal.length} mounts left after a refused mount; ${result.leftAfterUnmount.length} left after an acknowledged unmount; ` +
          `swapper: ${counts.swaps} swaps, ${counts.busy} refused as busy, ${counts.other} other failures`,
      );
    }

    // With the names back in place, the container mounts exactly where it should, once, read-only.
    if (fs.lstatSync(path.join(rootfs, variant.swapped)).isSymbolicLink()) {
      fs.renameSync(path.join(rootfs, variant.swapped), path.join(rootfs, 'tmp-link'));
      fs.renameSync(path.join(rootfs, link), path.join(rootfs, variant.swapped));
      fs.renameSync(path.join(rootfs, 'tmp-link'), path.join(rootfs, link));
    }
    await w.runtime.mount(c.id);
    expect(ofVolume().map((m) => [m.mountPoint, m.options.includes('ro')])).toEqual([[path.join(rootfs, variant.volumePath), true]]);
    await w.runtime.unmount(c.id);
    expect(ofVolume()).toEqual([]);
  }, RACE_HOOK_TIMEOUT_MS);

  test('no mount ever appears outside the rootfs, and the host never sees the volume; both outcomes of the race occur', () => {
    expect(result.attempts).toBe(variant.attempts);
    expect(result.escapes).toEqual([]);
    expect(result.decoyHits).toBe(0);
    expect(result.mounted).toBeGreaterThan(0);
    expect(Object.values(result.refused).reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
  });

  test('every refusal is ERR_PATH_ESCAPES_ROOTFS (a component swapped while it is walked fails like a symlink found there)', () => {
    expect(Object.keys(result.refused)).toEqual(['ERR_PATH_ESCAPES_ROOTFS']);
    expect(result.unmountErrors).toEqual({});
  });

  test('the read-only volume is never left mounted writable, or without nosuid,nodev, in the rootfs', () => {
    expect({ count: result.weakMounts.length, first: result.weakMounts.slice(0, 3) }).toEqual({ count: 0, first: [] });
  });

  test('a refused mount leaves nothing mounted: the mounts a failed call made are undone', () => {
    expect({ count: result.leftAfterRefusal.length, first: result.leftAfterRefusal.slice(0, 3) }).toEqual({ count: 0, first: [] });
  });

  test('an acknowledged unmount leaves nothing mounted', () => {
    expect({ count: result.leftAfterUnmount.length, first: result.leftAfterUnmount.slice(0, 3) }).toEqual({ count: 0, first: [] });
  });
});

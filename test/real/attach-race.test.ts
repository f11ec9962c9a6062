import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { busyboxRootfs } from '../helpers/busybox-rootfs.js';
import { cleanupTemp, expectCode, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { type MountLine, mountTable, unmountAllUnder } from '../helpers/mounts.js';
import { childNamed, killIfAlive } from '../helpers/processes.js';
import { startSwapper } from '../helpers/swapper.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * symlink-race.test.ts's race, against attach and detach: a process in a mount namespace
 * of its own, chrooted into a directory the test owns, has a volume attached and
 * detached in a loop while a swapper running *in that namespace* (where a container's
 * own process would run) exchanges a directory of the volume path with a symlink
 * pointing out of that root. Out of the root, where the symlink leads on the host, is a
 * decoy tmpfs; inside the root, where the same symlink leads clamped to the root, are
 * two more (one per kind of link). A volume mounted outside the root, a file of it seen
 * in the host's decoy, a decoy unmounted by detach, would each be a breach.
 */

/** Chosen as the library would choose it for a user: from CONTAINER_VOLUMES_MOUNT_ENGINE, else the kernel's. */
const engine = new BindMounter().engine;

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('attach-race-');
});
afterAll(async () => {
  for (const t of targets.splice(0)) stopTarget(t);
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** Every mount as "mount point ← source root": compared whole, so any new mount shows. */
const lines = (mounts: MountLine[]) => mounts.map((m) => `${m.mountPoint} ← ${m.root}`);

interface Target {
  /** The chrooted `sleep`: the process volumes are attached to. */
  pid: number;
  /** `unshare`, which stays in the new namespace with our root: its mountinfo shows every mount there, by host path, outside the chroot too. */
  holder: number;
}

const targets: Target[] = [];

/** `sleep` chrooted into `root` in a mount namespace of its own (a copy of ours, private). */
async function startTarget(root: string): Promise<Target> {
  const child = spawn('unshare', ['--mount', '--propagation', 'private', '--fork', '--kill-child', '--', 'chroot', root, '/bin/sleep', '3600'], { stdio: 'ignore' });
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });
  // Named sleep only once chroot has exec'd it: its root is then `root`.
  const pid = await childNamed(child.pid!, 'sleep', () => exited);
  const target = { pid, holder: child.pid! };
  targets.push(target);
  return target;
}

function stopTarget(t: Target): void {
  killIfAlive(t.pid);
  killIfAlive(t.holder);
}

/** A tmpfs of the test's at `at`, holding a file and an empty lib/db. */
function decoyMount(at: string, label: string): void {
  fs.mkdirSync(at, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', `decoy-${label}`, at]);
  fs.writeFileSync(path.join(at, 'decoy-file'), `${label}\n`);
  fs.mkdirSync(path.join(at, 'lib/db'), { recursive: true });
}

interface World {
  dir: string;
  /** The target's root. */
  root: string;
  /** Where the symlinks lead on the host: outside the root. */
  hostDecoy: string;
  /** Where they lead clamped to the root, as the process sees them: `/decoy` (relative link), `<hostDecoy>` (absolute link). */
  rootDecoys: string[];
  runtime: ContainerRuntime;
  /** A container sharing `volumePath` of another read-only, with `rootfs` the target's root; its volume's directory holds a `marker`. */
  container(volumePath: string): Promise<{ id: string; volume: string }>;
}

async function world(): Promise<World> {
  const dir = fs.mkdtempSync(path.join(base, 'w-'));
  const root = await busyboxRootfs(path.join(dir, 'root'));
  const hostDecoy = path.join(dir, 'decoy');
  decoyMount(hostDecoy, 'host');
  const rootDecoys = ['/decoy', hostDecoy];
  for (const d of rootDecoys) decoyMount(path.join(root, d), `in-root ${d}`);
  const runtime = new ContainerRuntime({ root: path.join(dir, 'state'), mounter: new BindMounter() });
  return {
    dir,
    root,
    hostDecoy,
    rootDecoys,
    runtime,
    async container(volumePath) {
      // Shared :ro: a mount of it that is writable (or lacks nosuid,nodev) would be a breach too.
      const source = await runtime.create({ rootfs: fs.mkdtempSync(path.join(dir, 'source-')), volumes: [volumePath] });
      const c = await runtime.create({ rootfs: root, volumesFrom: [`${source.id}:ro`] });
      const volume = path.join(dir, 'state', 'volumes', c.volumes[0]!.volumeId);
      fs.writeFileSync(path.join(volume, 'marker'), 'volume data\n');
      return { id: c.id, volume };
    },
  };
}

interface RaceVariant {
  what: string;
  /** 600 in all, in 25–45 s on a busy 2-core machine. */
  attempts: number;
  volumePath: string;
  /** The entry of `<root>/a` the swapper exchanges with `<swapped>.link`. */
  swapped: string;
  /** The link's target: both name the host's decoy when followed on the host. */
  link: (w: World) => string;
}

const ABSOLUTE = (w: World) => w.hostDecoy;
/** From `<root>/a`: `..` is the root, `../..` its parent on the host (and the root again inside it). */
const RELATIVE = () => '../../decoy';

const variants: RaceVariant[] = [
  { what: 'the target directory, with an absolute link', attempts: 150, volumePath: '/a/data', swapped: 'data', link: ABSOLUTE },
  { what: 'the target directory, with a relative link climbing out', attempts: 150, volumePath: '/a/data', swapped: 'data', link: RELATIVE },
  { what: 'a parent directory, with an absolute link', attempts: 150, volumePath: '/a/var/lib/db', swapped: 'var', link: ABSOLUTE },
  { what: 'a parent directory, with a relative link climbing out', attempts: 150, volumePath: '/a/var/lib/db', swapped: 'var', link: RELATIVE },
];

interface RaceResult {
  attempts: number;
  mounted: number;
  /** Where the process saw the volume after each attach that mounted it: all inside its root by construction of mountinfo. */
  landings: Record<string, number>;
  /** Attaches that found the volume present already (nothing to mount): none, as every attempt ends detached. */
  present: number;
  refused: Record<string, number>;
  /** Volumes detach reported detached, at the first try or a retry. */
  detached: number;
  detachErrors: Record<string, number>;
  /**
   * Detaches that found no volume at the path, because it led elsewhere than when the
   * volume was attached there (a link swapped since); a detach while the path led there
   * again then took it.
   */
  missedBySwap: number;
  /** New mounts of the namespace outside the root, by host path, at any scan. */
  escapes: string[];
  /** Changes to the mounts of the test's own namespace. */
  ownChanges: string[];
  /** Decoy mounts gone from the process's namespace or from ours. */
  decoysGone: string[];
  /** Scans at which the host decoy, in either namespace, no longer held exactly its own files. */
  decoyHits: number;
  scans: number;
  /** Mounts of the read-only volume, as the process sees them, without ro, nosuid or nodev. */
  weakMounts: string[];
  leftAfterRefusal: string[];
  /** Mounts of the volume left after detach reported it detached, or that no state of the path led to. */
  leftAfterDetach: string[];
  /**
   * Mounts that attach verified at the path, which the exchange then renamed (mount point
   * directory and all) before the mount made it busy: out of the path's reach, so detach
   * found them at no state of the path; the test unmounts them.
   */
  movedByContainer: string[];
  /** Times the attachment was recorded while the namespace held nothing of the volume, or forgotten while it held some. */
  attachmentWrong: string[];
}

/** Generous: a hook that timed out would leave its loop running on into the next variant's. */
const RACE_HOOK_TIMEOUT_MS = 300_000;

const tallyInto = (into: Record<string, number>, error: unknown) => {
  const code = (error as { code?: string }).code ?? `no code: ${(error as Error).message}`;
  into[code] = (into[code] ?? 0) + 1;
};

/** Every refusal the race can cause, and why. */
const EXPECTED_REFUSALS = [
  // A component swapped while it is walked or opened, or the mount point changed before it was verified.
  'ERR_PATH_ESCAPES_ROOTFS',
  // The link followed inside the root lands on a decoy mount (the target variants): something else is mounted there.
  'ERR_MOUNT_POINT_IN_USE',
];

// `npm test` runs this file once per engine; attach needs the kernel engine, so the races
// run in the kernel engine's pass, and the util-linux pass checks the refusal instead.

if (engine === 'kernel') describe.each(variants)(`attach ($what swapped with a symlink out of the process's root, in its namespace, while attach and detach run in a loop)`, (variant) => {
  const result: RaceResult = {
    attempts: 0,
    mounted: 0,
    landings: {},
    present: 0,
    refused: {},
    detached: 0,
    detachErrors: {},
    missedBySwap: 0,
    escapes: [],
    ownChanges: [],
    decoysGone: [],
    decoyHits: 0,
    scans: 0,
    weakMounts: [],
    leftAfterRefusal: [],
    leftAfterDetach: [],
    movedByContainer: [],
    attachmentWrong: [],
  };

  beforeAll(async () => {
    const w = await world();
    const { root } = w;
    const a = path.join(root, 'a');
    fs.mkdirSync(path.join(root, variant.volumePath), { recursive: true });
    const link = `${variant.swapped}.link`;
    fs.symlinkSync(variant.link(w), path.join(a, link));
    const c = await w.container(variant.volumePath);
    const t = await startTarget(root);
    const { pid, holder } = t;

    const theirs = () => mountTable(`/proc/${holder}/mountinfo`);
    const ofVolume = (mounts: MountLine[]) => mounts.filter((m) => m.root === c.volume);
    const decoyPaths = [w.hostDecoy, ...w.rootDecoys.map((d) => path.join(root, d))];
    const decoyIds = (mounts: MountLine[]) => decoyPaths.map((p) => mounts.filter((m) => m.mountPoint === p).at(-1)?.id);
    const theirBaseline = new Set(lines(theirs()));
    const theirDecoys = decoyIds(theirs());
    const ownBaseline = lines(mountTable()).join('\n');
    const ownDecoys = decoyIds(mountTable());
    expect(theirDecoys.every((id) => id !== undefined)).toBe(true);
    /** The host decoy in our namespace and in theirs (reached through the holder's root). */
    const hostDecoyViews = [w.hostDecoy, `/proc/${holder}/root${w.hostDecoy}`];
    const hostDecoyFiles = (view: string) => [...fs.readdirSync(view), ...fs.readdirSync(path.join(view, 'lib/db'))].sort().join(',');
    const decoyBefore = await snapshotTree(w.hostDecoy);

    const swapper = await startSwapper(a, variant.swapped, link, w.dir, ['nsenter', `--mount=/proc/${holder}/ns/mnt`, '--']);
    const scan = (when: string) => {
      result.scans++;
      const mounts = theirs();
      for (const line of lines(mounts)) if (!theirBaseline.has(line) && !line.startsWith(`${root}/`)) result.escapes.push(`${when} ${result.attempts}: ${line}`);
      const own = mountTable();
      if (lines(own).join('\n') !== ownBaseline) result.ownChanges.push(`${when} ${result.attempts}`);
      const [nowTheirs, nowOwn] = [decoyIds(mounts), decoyIds(own)];
      decoyPaths.forEach((p, i) => {
        if (nowTheirs[i] !== theirDecoys[i] || nowOwn[i] !== ownDecoys[i]) result.decoysGone.push(`${when} ${result.attempts}: ${p}`);
      });
      if (hostDecoyViews.some((view) => hostDecoyFiles(view) !== 'decoy-file,lib')) result.decoyHits++;
      for (const m of ofVolume(mountTable(`/proc/${pid}/mountinfo`))) {
        if (!['ro', 'nosuid', 'nodev'].every((o) => m.options.includes(o))) result.weakMounts.push(`${when} ${result.attempts}: ${m.mountPoint} (${m.options.join(',')})`);
      }
    };
    /** Unmounts leftovers inside their namespace by the paths its mountinfo gives, with the swapper frozen so that those paths hold still. */
    const clear = async (into: string[], when: string) => {
      await swapper.pause();
      for (const m of ofVolume(theirs()).reverse()) {
        into.push(`${when} ${result.attempts}: ${path.relative(root, m.mountPoint)} (${m.options.join(',')})`);
        execFileSync('nsenter', [`--mount=/proc/${holder}/ns/mnt`, '--', 'umount', '--lazy', m.mountPoint]);
      }
      swapper.resume();
    };
    const detach = async () => {
      try {
        const { detached } = await w.runtime.detach(c.id, { pid });
        result.detached += detached.length;
        return detached;
      } catch (error) {
        tallyInto(result.detachErrors, error);
        return undefined;
      }
    };

    /** The attachment is recorded exactly while the namespace holds the volume. */
    const checkAttachment = async (when: string) => {
      const recorded = (await w.runtime.get(c.id)).attachedTo !== undefined;
      const held = ofVolume(theirs()).length > 0;
      if (recorded !== held) result.attachmentWrong.push(`${when} ${result.attempts}: ${held ? 'mounted' : 'not mounted'}, attachment ${recorded ? 'kept' : 'forgotten'}`);
    };
    /** Where the exchange puts the mount point directory itself: no state of the path leads there. */
    const outOfReach = path.posix.join('/a', link, path.posix.relative(`/a/${variant.swapped}`, variant.volumePath));
    /** After a detach that found the volume gone from where its path now leads. */
    const detachOnceReachable = async () => {
      result.missedBySwap++;
      // Once the path leads to the volume again, detach must take it.
      for (let round = 0; round < 100 && ofVolume(theirs()).length > 0; round++) {
        await swapper.pause();
        await detach();
        swapper.resume();
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
      scan('after detach retried');
      const left = ofVolume(mountTable(`/proc/${pid}/mountinfo`)).map((m) => m.mountPoint);
      if (left.length === 0) return;
      // Left where the exchange moved the mount point directory itself (a rename the kernel
      // checked against mount points just before the mount landed, and completed after it
      // was verified): the container moved it out of its path's reach, as renaming a parent
      // would. Detach must leave it, and keep the container in use.
      await checkAttachment('moved out of reach');
      if (left.every((at) => at === outOfReach)) result.movedByContainer.push(`attempt ${result.attempts}: ${left.join(', ')}`);
      await clear(left.every((at) => at === outOfReach) ? [] : result.leftAfterDetach, 'after detach retried 100 times');
    };

    const started = Date.now();
    try {
      for (; result.attempts < variant.attempts; result.attempts++) {
        let refused = false;
        try {
          const { attached } = await w.runtime.attach(c.id, { pid });
          if (attached.length === 0) result.present++;
          result.mounted += attached.length;
          for (const m of ofVolume(mountTable(`/proc/${pid}/mountinfo`))) result.landings[m.mountPoint] = (result.landings[m.mountPoint] ?? 0) + 1;
        } catch (error) {
          tallyInto(result.refused, error);
          refused = true;
        }
        scan('after attach');
        if (refused && ofVolume(theirs()).length > 0) await clear(result.leftAfterRefusal, 'after refused attach');
        const detached = await detach();
        scan('after detach');
        if (ofVolume(theirs()).length > 0) {
          if (detached !== undefined && detached.length > 0) await clear(result.leftAfterDetach, 'after acknowledged detach');
          else await detachOnceReachable();
          // Nothing of the volume is left: this one forgets the attachment.
          await detach();
        }
        await checkAttachment('at the end of the attempt');
      }
    } finally {
      const counts = await swapper.stop();
      const refusedTotal = Object.values(result.refused).reduce((x, y) => x + y, 0);
      console.log(
        `attach race on ${variant.what} (${variant.volumePath}, link to ${variant.link(w)}, shared :ro, ${swapper.kind} swapper in the process's namespace): ` +
          `${result.attempts} attempts in ${Date.now() - started} ms: ${result.mounted} mounted (at ${JSON.stringify(result.landings)}), ${result.present} found present, ` +
          `${refusedTotal} refused (${((100 * refusedTotal) / Math.max(1, result.attempts)).toFixed(1)}%: ${JSON.stringify(result.refused)}); ` +
          `${result.detached} detached, detach errors ${JSON.stringify(result.detachErrors)}, ${result.missedBySwap} detaches missed a volume the path no longer led to (${result.movedByContainer.length} of them moved out of its reach for good); ` +
          `${result.scans} scans: ${result.escapes.length} escapes, ${result.ownChanges.length} changes to our namespace, ${result.decoysGone.length} decoys unmounted, ` +
          `${result.decoyHits} host decoy hits, ${result.weakMounts.length} mounts without ro,nosuid,nodev; ` +
          `${result.leftAfterRefusal.length} mounts left after a refused attach, ${result.leftAfterDetach.length} after detach, attachment record wrong ${result.attachmentWrong.length} times; ` +
          `swapper: ${counts.swaps} swaps, ${counts.busy} refused as busy, ${counts.other} other failures`,
      );
    }

    // With the names back in place, the volume is attached exactly where it should be, once, read-only, and detached.
    if (fs.lstatSync(path.join(a, variant.swapped)).isSymbolicLink()) {
      fs.renameSync(path.join(a, variant.swapped), path.join(a, 'tmp-link'));
      fs.renameSync(path.join(a, link), path.join(a, variant.swapped));
      fs.renameSync(path.join(a, 'tmp-link'), path.join(a, link));
    }
    expect((await w.runtime.attach(c.id, { pid })).attached).toEqual([variant.volumePath]);
    expect(ofVolume(mountTable(`/proc/${pid}/mountinfo`)).map((m) => [m.mountPoint, m.options.includes('ro')])).toEqual([[variant.volumePath, true]]);
    expect((await w.runtime.detach(c.id, { pid })).detached).toEqual([variant.volumePath]);
    expect(ofVolume(theirs())).toEqual([]);
    for (const view of hostDecoyViews) expect(await snapshotTree(view)).toEqual(decoyBefore);
    expect(decoyIds(theirs())).toEqual(theirDecoys);
    stopTarget(t);
  }, RACE_HOOK_TIMEOUT_MS);

  test('no mount ever appears outside the process’s root, in its namespace or ours, and the host decoy never changes; both outcomes of the race occur', () => {
    expect(result.attempts).toBe(variant.attempts);
    expect(result.escapes).toEqual([]);
    expect(result.ownChanges).toEqual([]);
    expect(result.decoyHits).toBe(0);
    expect(result.mounted).toBeGreaterThan(0);
    expect(result.present).toBe(0);
    expect(Object.values(result.refused).reduce((x, y) => x + y, 0)).toBeGreaterThan(0);
  });

  test(`every refusal has a code: ${EXPECTED_REFUSALS.join(' or ')}; detach never fails`, () => {
    expect(Object.keys(result.refused).filter((code) => !EXPECTED_REFUSALS.includes(code))).toEqual([]);
    expect(result.detachErrors).toEqual({});
  });

  test('the read-only volume is never mounted writable, or without nosuid,nodev, in the process’s namespace', () => {
    expect({ count: result.weakMounts.length, first: result.weakMounts.slice(0, 3) }).toEqual({ count: 0, first: [] });
  });

  test('a refused attach leaves nothing mounted: the mounts a failed call made are undone', () => {
    expect({ count: result.leftAfterRefusal.length, first: result.leftAfterRefusal.slice(0, 3) }).toEqual({ count: 0, first: [] });
  });

  test('detach leaves nothing mounted once the path leads to the volume, and never unmounts a decoy the link leads to', () => {
    expect({ count: result.leftAfterDetach.length, first: result.leftAfterDetach.slice(0, 3) }).toEqual({ count: 0, first: [] });
    expect(result.decoysGone).toEqual([]);
    expect(result.detached).toBe(result.mounted - result.movedByContainer.length);
  });

  test('the attachment is recorded exactly while the namespace holds the volume, even one moved out of its path’s reach', () => {
    expect({ count: result.attachmentWrong.length, first: result.attachmentWrong.slice(0, 3) }).toEqual({ count: 0, first: [] });
  });
});

if (engine !== 'kernel') test(
  `under the ${engine} engine attach is refused with ERR_ATTACH_UNSUPPORTED, nothing changed (the races run in the kernel engine's pass)`,
  async () => {
    const w = await world();
    const c = await w.container('/a/data');
    const t = await startTarget(w.root);
    try {
      const stored = await w.runtime.get(c.id);
      await expectCode(w.runtime.attach(c.id, { pid: t.pid }), 'ERR_ATTACH_UNSUPPORTED');
      expect(await w.runtime.get(c.id)).toEqual(stored);
      expect(mountTable(`/proc/${t.pid}/mountinfo`).filter((m) => m.root === c.volume)).toEqual([]);
    } finally {
      stopTarget(t);
    }
  },
);

if (engine === 'kernel') describe('a volume the container moved out of its path’s reach', () => {
  test('detach leaves it and keeps the attachment: remove stays refused while the namespace holds it', async () => {
    const w = await world();
    fs.mkdirSync(path.join(w.root, 'a/data'), { recursive: true });
    const c = await w.container('/a/data');
    const t = await startTarget(w.root);
    const inTheirs = () => mountTable(`/proc/${t.pid}/mountinfo`).filter((m) => m.root === c.volume).map((m) => m.mountPoint);
    try {
      expect((await w.runtime.attach(c.id, { pid: t.pid })).attached).toEqual(['/a/data']);
      // What the container's own process may do: rename a parent of its mount point.
      execFileSync('nsenter', [`--mount=/proc/${t.holder}/ns/mnt`, '--', 'mv', path.join(w.root, 'a'), path.join(w.root, 'b')]);
      expect(inTheirs()).toEqual(['/b/data']);

      const { detached, container } = await w.runtime.detach(c.id, { pid: t.pid });
      expect(detached).toEqual([]);
      expect(container.attachedTo).toEqual([{ pid: t.pid }]);
      await expectCode(w.runtime.remove(c.id, { force: true }), 'ERR_CONTAINER_ATTACHED');
      expect(inTheirs()).toEqual(['/b/data']);

      // Back where its path leads, it is detached, and the attachment forgotten.
      execFileSync('nsenter', [`--mount=/proc/${t.holder}/ns/mnt`, '--', 'mv', path.join(w.root, 'b'), path.join(w.root, 'a')]);
      const again = await w.runtime.detach(c.id, { pid: t.pid });
      expect([again.detached, again.container.attachedTo]).toEqual([['/a/data'], undefined]);
      expect(inTheirs()).toEqual([]);
      await w.runtime.remove(c.id);
    } finally {
      stopTarget(t);
    }
  });
});

import assert from 'node:assert/strict';
import type { Mounter } from './mounter.js';

/** What a contract case needs: the mounter under test and fresh directories. */
export interface MounterFixture {
  /** The mounter under test: a new one per case, or one for all, since each case works in directories of its own. */
  mounter: Mounter;
  /** A new, empty directory to serve as a container rootfs. */
  makeRootfs(): Promise<string>;
  /** A new directory to serve as a volume. */
  makeSource(): Promise<string>;
}

/** One behaviour of the contract, to run as one test. */
export interface MounterContractCase {
  /** The behaviour, as a sentence: use it as the test's name. */
  name: string;
  /**
   * Checks the behaviour on a fresh fixture: resolves when the mounter has it, rejects
   * (with node:assert's AssertionError, or the mounter's own error) when not. A case
   * that passes undoes its mounts; one that fails may leave some in the fixture's rootfs,
   * so discard the rootfs after each. A case about an optional method resolves at once
   * when the mounter lacks it.
   */
  run(fixture: MounterFixture): Promise<void>;
}

async function rejectsWithCode(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: { code?: string }) => {
    assert.equal(error.code, code);
    return true;
  });
}

/**
 * The behaviour every Mounter must have, as framework-free cases that throw on
 * failure. Run each case with a fresh fixture, e.g. in jest:
 * `for (const c of mounterContract) test(c.name, () => c.run(makeFixture()))`.
 */
export const mounterContract: readonly MounterContractCase[] = [
  {
    name: 'a mount shows in list() with its path, mode and source',
    async run({ mounter, makeRootfs, makeSource }) {
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      await mounter.mount({ source, rootfs, path: '/var/lib/db', mode: 'rw' });
      const listed = await mounter.list(rootfs);
      assert.equal(listed.length, 1);
      assert.equal(listed[0]?.path, '/var/lib/db');
      assert.equal(listed[0]?.mode, 'rw');
      if (listed[0]?.source !== undefined) assert.equal(listed[0].source, source);
      await mounter.unmount({ rootfs, path: '/var/lib/db' });
    },
  },
  {
    name: 'a read-only mount is listed as ro',
    async run({ mounter, makeRootfs, makeSource }) {
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      await mounter.mount({ source, rootfs, path: '/data', mode: 'ro' });
      assert.deepEqual((await mounter.list(rootfs)).map((m) => [m.path, m.mode]), [['/data', 'ro']]);
      await mounter.unmount({ rootfs, path: '/data' });
    },
  },
  {
    name: 'unmount removes the mount from list()',
    async run({ mounter, makeRootfs, makeSource }) {
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      await mounter.mount({ source, rootfs, path: '/data', mode: 'rw' });
      await mounter.unmount({ rootfs, path: '/data' });
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
  {
    name: 'unmount is idempotent: nothing mounted, twice, or a missing path all succeed',
    async run({ mounter, makeRootfs, makeSource }) {
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      await mounter.unmount({ rootfs, path: '/never/created' });
      await mounter.mount({ source, rootfs, path: '/data', mode: 'rw' });
      await mounter.unmount({ rootfs, path: '/data' });
      await mounter.unmount({ rootfs, path: '/data' });
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
  {
    name: 'nested mounts list parents first and unmount children first',
    async run({ mounter, makeRootfs, makeSource }) {
      const [rootfs, outer, inner] = [await makeRootfs(), await makeSource(), await makeSource()];
      await mounter.mount({ source: outer, rootfs, path: '/srv', mode: 'rw' });
      await mounter.mount({ source: inner, rootfs, path: '/srv/cache', mode: 'ro' });
      assert.deepEqual((await mounter.list(rootfs)).map((m) => [m.path, m.mode]), [
        ['/srv', 'rw'],
        ['/srv/cache', 'ro'],
      ]);
      await mounter.unmount({ rootfs, path: '/srv/cache' });
      await mounter.unmount({ rootfs, path: '/srv' });
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
  {
    name: 'list() of one rootfs does not show the mounts of another',
    async run({ mounter, makeRootfs, makeSource }) {
      const [a, b, source] = [await makeRootfs(), await makeRootfs(), await makeSource()];
      await mounter.mount({ source, rootfs: a, path: '/data', mode: 'rw' });
      assert.deepEqual(await mounter.list(b), []);
      assert.equal((await mounter.list(a)).length, 1);
      await mounter.unmount({ rootfs: a, path: '/data' });
    },
  },
  {
    name: 'mountAll, when implemented, mounts a read-only parent with a child inside, and unmountAll detaches both',
    async run({ mounter, makeRootfs, makeSource }) {
      if (!mounter.mountAll || !mounter.unmountAll) return;
      const [rootfs, outer, inner] = [await makeRootfs(), await makeSource(), await makeSource()];
      await mounter.mountAll([
        { source: outer, rootfs, path: '/srv', mode: 'ro' },
        { source: inner, rootfs, path: '/srv/cache', mode: 'rw' },
      ]);
      assert.deepEqual((await mounter.list(rootfs)).map((m) => [m.path, m.mode]), [
        ['/srv', 'ro'],
        ['/srv/cache', 'rw'],
      ]);
      await mounter.unmountAll([
        { rootfs, path: '/srv/cache' },
        { rootfs, path: '/srv' },
        { rootfs, path: '/never/mounted' },
      ]);
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
  {
    name: 'mountAll, when implemented, is all or nothing: one bad request leaves nothing mounted',
    async run({ mounter, makeRootfs, makeSource }) {
      if (!mounter.mountAll) return;
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      await rejectsWithCode(
        mounter.mountAll([
          { source, rootfs, path: '/data', mode: 'rw' },
          { source, rootfs, path: '/bad/../path', mode: 'rw' },
        ]),
        'ERR_INVALID_VOLUME_PATH',
      );
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
  {
    name: 'a mounter declaring supportsIdmap mounts a request with an idmap (shown idmapped when it tells options), and refuses a malformed one',
    async run({ mounter, makeRootfs, makeSource }) {
      if (mounter.supportsIdmap !== true) return;
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      const range = [{ containerID: 0, hostID: 100000, size: 65536 }];
      await mounter.mount({ source, rootfs, path: '/data', mode: 'ro', idmap: { uidMappings: range, gidMappings: range } });
      const listed = await mounter.list(rootfs);
      assert.deepEqual(listed.map((m) => [m.path, m.mode]), [['/data', 'ro']]);
      if (listed[0]?.options !== undefined) assert.ok(listed[0].options.includes('idmapped'), `options ${listed[0].options.join(',')} lack idmapped`);
      await mounter.unmount({ rootfs, path: '/data' });
      await rejectsWithCode(mounter.mount({ source, rootfs, path: '/data', mode: 'rw', idmap: { uidMappings: range, gidMappings: [] } }), 'ERR_INVALID_ARGUMENT');
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
  {
    name: 'bad requests are refused with a code and mount nothing',
    async run({ mounter, makeRootfs, makeSource }) {
      const [rootfs, source] = [await makeRootfs(), await makeSource()];
      await rejectsWithCode(mounter.mount({ source, rootfs, path: 'relative', mode: 'rw' }), 'ERR_INVALID_VOLUME_PATH');
      await rejectsWithCode(mounter.mount({ source, rootfs, path: '/a/../b', mode: 'rw' }), 'ERR_INVALID_VOLUME_PATH');
      await rejectsWithCode(mounter.mount({ source, rootfs, path: '/data', mode: 'rx' as 'ro' }), 'ERR_INVALID_MODE');
      await rejectsWithCode(mounter.mount({ source, rootfs: 'rootfs', path: '/data', mode: 'rw' }), 'ERR_INVALID_ROOTFS');
      await rejectsWithCode(mounter.unmount({ rootfs, path: '' }), 'ERR_INVALID_VOLUME_PATH');
      await rejectsWithCode(mounter.list('relative/dir'), 'ERR_INVALID_ARGUMENT');
      assert.deepEqual(await mounter.list(rootfs), []);
    },
  },
];

import { describe, expect, test, afterAll } from '@jest/globals';
import { FakeMounter } from '../../src/index.js';
import { mounterContract } from '../../src/testing.js';
import { cleanupTemp, tempDir } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

describe('Mounter contract: FakeMounter', () => {
  for (const contractCase of mounterContract) {
    test(contractCase.name, () =>
      contractCase.run({ mounter: new FakeMounter(), makeRootfs: () => tempDir('rootfs-'), makeSource: () => tempDir('vol-') }),
    );
  }
});

describe('FakeMounter.failOn checks its rule', () => {
  test.each([
    ['an unknown op', { op: 'mnt' }],
    ['times 0', { op: 'mount', times: 0 }],
    ['negative times', { op: 'mount', times: -1 }],
    ['fractional times', { op: 'mount', times: 1.5 }],
    ['times undefined given explicitly as null', { op: 'mount', times: null }],
    ['a path that is not a string', { op: 'unmount', path: 42 }],
    ['an error that is not an Error', { op: 'list', error: 'boom' }],
    ['an unknown key', { op: 'mount', when: 'always' }],
    ['not an object', 'mount'],
  ])('%s is ERR_INVALID_ARGUMENT, and no rule is added', async (_, rule) => {
    const mounter = new FakeMounter();
    expect(() => mounter.failOn(rule as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    // No rule was added: a mount goes through.
    const rootfs = await tempDir('rootfs-');
    await mounter.mount({ source: await tempDir('vol-'), rootfs, path: '/data', mode: 'rw' });
    expect(await mounter.list(rootfs)).toHaveLength(1);
  });

  test('a rule with times: 2 fails two matching calls, then none', async () => {
    const mounter = new FakeMounter();
    mounter.failOn({ op: 'list', times: 2 });
    const rootfs = await tempDir('rootfs-');
    await expect(mounter.list(rootfs)).rejects.toMatchObject({ code: 'ERR_MOUNT_FAILED' });
    await expect(mounter.list(rootfs)).rejects.toMatchObject({ code: 'ERR_MOUNT_FAILED' });
    await expect(mounter.list(rootfs)).resolves.toEqual([]);
  });
});

import { describe, test, afterAll } from '@jest/globals';
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

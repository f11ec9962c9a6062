import { createDefaultEsmPreset } from 'ts-jest';

const base = {
  ...createDefaultEsmPreset({ tsconfig: './tsconfig.json' }),
  testEnvironment: 'node',
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
};

/** unit: the fake mounter, no root needed. real: real bind mounts, run by test/run.mjs inside `unshare -m`. */
export default {
  projects: [
    { ...base, displayName: 'unit', roots: ['<rootDir>/test/unit'] },
    { ...base, displayName: 'real', roots: ['<rootDir>/test/real'] },
  ],
};

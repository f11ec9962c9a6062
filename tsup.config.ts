import { defineConfig } from 'tsup';

export default defineConfig([
  {
    entry: ['src/index.ts', 'src/testing.ts'],
    format: ['esm', 'cjs'],
    dts: true,
    // The command line is built beside the library by the second entry: not cleaned away.
    clean: ['!cli.js'],
    // The CommonJS build needs import.meta.url to find koffi with createRequire.
    shims: true,
    target: 'node20',
  },
  {
    // The command uses the package's public API by its name, as any user would: it is
    // not bundled into the command, which resolves it to the package it ships in.
    entry: { cli: 'src/cli/main.ts' },
    format: ['esm'],
    external: ['container-volumes'],
    clean: false,
    target: 'node20',
  },
]);

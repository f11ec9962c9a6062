#!/usr/bin/env node
// `npm test`: build (examples import the built package), type-check, the API reference and
// the package checks, the unit suite
// (fake mounter), then the real-mount suite as root inside a private mount namespace.
// When the real-mount suite cannot run, this says so loudly, and with CI=true fails.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const results = '.test-results';
fs.mkdirSync(results, { recursive: true });
const jest = ['--experimental-vm-modules', '--disable-warning=ExperimentalWarning', 'node_modules/jest/bin/jest.js'];
const forwarded = process.argv.slice(2);

function step(name, command, args, env = {}) {
  console.log(`\n=== ${name}: ${[command, ...args].join(' ')}`);
  const { status } = spawnSync(command, args, { stdio: 'inherit', env: { ...process.env, ...env } });
  return status === 0;
}

function counts(file) {
  try {
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    return { passed: json.numPassedTests, failed: json.numFailedTests + json.numRuntimeErrorTestSuites, skipped: json.numPendingTests };
  } catch {
    return { passed: 0, failed: 1, skipped: 0 };
  }
}

function canMountForReal() {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid() !== 0) return 'not root';
  const probe = spawnSync('unshare', ['-m', '--propagation', 'private', 'true']);
  return probe.status === 0 ? null : `unshare -m failed: ${String(probe.stderr).trim() || probe.error?.message}`;
}

// Build first: the examples are type-checked against the built package, as a user would import it.
let ok = step('build', 'npx', ['tsup', '--silent']) && step('typecheck', 'npx', ['tsc', '--noEmit']);
if (!ok) process.exit(1);

// The package as npm would publish it: the API reference (every public symbol documented,
// typedoc's warnings are errors), then the packed tarball checked by publint and
// arethetypeswrong (the node16 profile: Node 20 resolves through `exports`), and for
// citations of documents it does not hold and links to files it lacks.
const tarball = path.join(results, 'package');
fs.rmSync(tarball, { recursive: true, force: true });
fs.mkdirSync(tarball, { recursive: true });
ok =
  step('API reference (typedoc, warnings are errors)', 'npx', ['typedoc']) &&
  step('pack', 'npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', tarball]) &&
  step('package contents', process.execPath, ['test/package-check.mjs']) &&
  step('publint', 'npx', ['publint', '--strict', ...packed(tarball)]) &&
  step('arethetypeswrong', 'npx', ['attw', '--profile', 'node16', ...packed(tarball)]);
if (!ok) process.exit(1);

function packed(dir) {
  return fs.readdirSync(dir).filter((name) => name.endsWith('.tgz')).map((name) => path.join(dir, name));
}

const unitFile = path.join(results, 'unit.json');
ok = step('unit tests (fake mounter)', process.execPath, [...jest, '--selectProjects', 'unit', '--json', `--outputFile=${unitFile}`, ...forwarded]) && ok;
const unit = counts(unitFile);

// Once per BindMounter engine: the default (the kernel's mount API where it can run), then util-linux.
const defaultEngine = spawnSync(process.execPath, ['--input-type=module', '-e', "import { BindMounter } from './dist/index.js'; console.log(new BindMounter().engine)"], {
  encoding: 'utf8',
  env: { ...process.env, CONTAINER_VOLUMES_MOUNT_ENGINE: '' },
}).stdout.trim();
const engines = [
  { name: `${defaultEngine || 'default'} engine, the default here`, env: { CONTAINER_VOLUMES_MOUNT_ENGINE: '' } },
  // Two files are left out of the second pass: they never mount with the runtime's
  // mounter, so the engine cannot change what they see (copy-up runs `cp` in a namespace
  // of its own; backups mount in handler namespaces, always with util-linux).
  {
    name: 'util-linux engine',
    env: { CONTAINER_VOLUMES_MOUNT_ENGINE: 'util-linux' },
    ignore: ['/test/real/copy-up\\.test\\.ts$', '/test/real/backup\\.test\\.ts$'],
  },
];
const real = engines.map(() => ({ passed: 0, failed: 0, skipped: 0 }));
const cannot = canMountForReal();
if (cannot) {
  const banner = '!'.repeat(78);
  console.error(`\n${banner}\n!!! REAL-MOUNT TESTS NOT RUN: ${cannot}.\n!!! They need root on Linux; run \`sudo npm test\` to include them.\n${banner}`);
  if (process.env.CI === 'true') {
    console.error('CI=true: a run without the real-mount tests is a failure.');
    ok = false;
  }
} else {
  engines.forEach((engine, i) => {
    const realFile = path.join(results, `real-${i}.json`);
    ok =
      step(`real-mount tests (BindMounter, ${engine.name}, private mount namespace)`, 'unshare', [
        '-m', '--propagation', 'private', '--', process.execPath, ...jest, '--selectProjects', 'real', '--runInBand', '--json', `--outputFile=${realFile}`,
        ...(engine.ignore ?? []).flatMap((pattern) => ['--testPathIgnorePatterns', pattern]), ...forwarded,
      ], { CONTAINER_VOLUMES_HOST_MNT_NS: fs.readlinkSync('/proc/self/ns/mnt'), ...engine.env }) && ok;
    real[i] = counts(realFile);
    if (real[i].passed === 0) ok = false;
  });
}

console.log(`\nunit tests (fake mounter): ${unit.passed} passed, ${unit.failed} failed, ${unit.skipped} skipped`);
engines.forEach((engine, i) => {
  const r = real[i];
  console.log(`real-mount tests (${engine.name}): ${cannot ? 'NOT RUN' : `${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped`}`);
});
const sum = (key) => unit[key] + real.reduce((total, r) => total + r[key], 0);
console.log(`${sum('passed')} passed, ${sum('failed')} failed`);
process.exit(ok ? 0 : 1);

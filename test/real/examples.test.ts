import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * Runs every example as a user would (`tsx examples/<name>.ts`) against the built
 * package (`npm test` builds dist/ first: the examples import 'container-volumes').
 * Each gets its own TMPDIR, so we can check it cleaned up after itself and left
 * nothing mounted; it runs in this suite's private mount namespace, so its mounts are
 * visible to us here.
 */
const examplesDir = path.resolve('examples');
/** Imported by the examples, or run by them (receive.ts is host B's end): not stories of their own. */
const MODULES = ['pick-mounter.ts', 'two-hosts.ts', 'receive.ts'];
const examples = fs
  .readdirSync(examplesDir)
  .filter((name) => name.endsWith('.ts') && !MODULES.includes(name))
  .sort();

/** Lines an example must print, beyond the ones every example must. */
const expectedLines: Record<string, RegExp[]> = {
  'seed-story.ts': [
    /^copy-up: the \/var\/lib\/postgres volume starts with postgresql\.conf$/m,
    /^db wrote \/var\/lib\/postgres\/PG_VERSION: 16$/m,
    /^backup job reads \/var\/lib\/postgres\/PG_VERSION: 16$/m,
    /^reader has \/var\/log \(ro\), \/var\/lib\/postgres \(ro\)$/m,
    /^reader writing \/var\/log\/reader\.log: refused with EROFS$/m,
    /^after removal: 0 containers, 0 volumes$/m,
  ],
  'backup-restore.ts': [
    /^removing volume [0-9a-f-]{36} while a handler uses it: refused with ERR_VOLUME_IN_USE$/m,
    /^backup +\[#{24}\] 100% {2}2\.0 MB \/ 2\.0 MB$/m,
    /^archive db\.tar: 2\.0 MB \(the WAL's hole is not stored\), 11 members, the first container-volumes-backup\.json$/m,
    // The container's own modes, not those of the read-only share backup reads through.
    /^manifest: container [0-9a-f-]{36}, volumes \/var\/log \(rw, [0-9a-f-]{36}\), \/var\/lib\/postgres \(rw, [0-9a-f-]{36}\)$/m,
    /^restore +\[#{24}\] 100% {2}2\.0 MB \/ 2\.0 MB$/m,
    /^restored [0-9a-f-]{36}: \/var\/log → new volume [0-9a-f-]{36} \(rw\), \/var\/lib\/postgres → new volume [0-9a-f-]{36} \(rw\)$/m,
    /^restored container reads \/var\/lib\/postgres\/PG_VERSION: 16$/m,
    /^\/var\/log: files 1, fingerprint ([0-9a-f]{16}) in db, \1 restored: same$/m,
    /^\/var\/lib\/postgres: files 3, fingerprint ([0-9a-f]{16}) in db, \1 restored: same$/m,
    /^after removal: 0 containers, 0 volumes$/m,
    /^backup-restore done: temporary directories deleted$/m,
  ],
  'lxc.ts': [
    /^db: lxc-execute with 2 volume entries:$/m,
    /^ {2}lxc\.mount\.entry = \S+\/volumes\/[0-9a-f-]{36} var\/lib\/postgres none bind,rw,nosuid,nodev 0 0$/m,
    /^db saw \/var\/lib\/postgres mounted rw,nosuid,nodev(,|$)/m,
    /^db wrote \/var\/lib\/postgres\/PG_VERSION: 16$/m,
    /^ {2}lxc\.mount\.entry = \S+\/volumes\/[0-9a-f-]{36} var\/log none bind,ro,nosuid,nodev 0 0$/m,
    /^backup job writing \/var\/log\/backup\.log: refused \(Read-only file system\)$/m,
    /^backup job archived: var\/lib\/postgres\/PG_VERSION, var\/lib\/postgres\/postgresql\.conf, var\/log\/db\.log$/m,
    /^after both containers exited: mounted flags false, false; 0 mounts under their rootfs on the host$/m,
    /^after removal: 0 containers, 0 volumes$/m,
    /^lxc example done: temporary directories deleted$/m,
  ],
  'move-to-another-host.ts': [
    /^sync 1: \d+ files sent, [\d.]+ KiB over ssh$/m,
    /^writer stopped; final sync: \d+ files sent, [\d.]+ KiB over ssh$/m,
    /^host B restored container [0-9a-f-]{36}: \/var\/lib\/postgres, \/var\/log$/m,
    /^\/var\/lib\/postgres: fingerprint ([0-9a-f]{16}) on A, \1 on B: same$/m,
    /^\/var\/log: fingerprint ([0-9a-f]{16}) on A, \1 on B: same$/m,
    /^move-to-another-host done: both hosts torn down, temporary directories deleted$/m,
  ],
};

let tmp: string;
beforeAll(() => {
  assertPrivateMountNamespace();
  tmp = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'cv-examples-')));
});
afterAll(() => {
  if (!tmp) return;
  unmountAllUnder(tmp);
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('examples/', () => {
  test('there is at least the seed story and the backup-restore story', () => {
    expect(examples).toEqual(expect.arrayContaining(['seed-story.ts', 'backup-restore.ts']));
  });

  test.each(examples)('%s runs to the end with real bind mounts and cleans up', (name) => {
    const own = fs.mkdtempSync(path.join(tmp, `${path.basename(name, '.ts')}-`));
    const run = spawnSync('node_modules/.bin/tsx', [path.join(examplesDir, name)], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, TMPDIR: own, DEBUG: '' },
    });
    const output = `${run.stdout}${run.stderr}`;
    expect({ status: run.status, signal: run.signal, error: run.error?.message, output }).toMatchObject({ status: 0 });
    // It may still re-run itself under `unshare -m` (it cannot tell our namespace is
    // private when /proc/1/ns/mnt is unreadable, as in some sandboxes): harmless.
    expect(run.stdout).toMatch(/^mounter: BindMounter, real bind mounts/m);
    expect(run.stdout).not.toMatch(/FakeMounter/);
    for (const line of expectedLines[name] ?? []) expect(run.stdout).toMatch(line);
    expect(mountsUnder(own)).toEqual([]);
    // tsx keeps its compile cache in TMPDIR; anything else is the example's own debris.
    expect(fs.readdirSync(own).filter((entry) => !entry.startsWith('tsx-'))).toEqual([]);
  }, 150_000);
});

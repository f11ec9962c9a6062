/**
 * The `container-volumes` command as users get it: the packed tarball installed with npm
 * into a scratch project, its installed bin run for real (real bind mounts, in this
 * suite's private mount namespace), and the package imported from ESM and CommonJS with
 * its types checked by tsc.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { realWorld } from '../helpers/real-world.js';
import { installPackedPackage } from '../helpers/packed-package.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

let base: string;
let installed: ReturnType<typeof installPackedPackage>;

beforeAll(() => {
  assertPrivateMountNamespace();
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'cv-cli-'));
  installed = installPackedPackage(base);
}, 120_000);

afterAll(() => {
  unmountAllUnder(base);
  execFileSync('rm', ['-rf', '--one-file-system', '--', base]);
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the installed bin; the store is given by the environment unless `root` is null. */
function cli(args: string[], options: { root?: string | null; input?: string | Buffer; cwd?: string } = {}): Run {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };
  delete env.CONTAINER_VOLUMES_ROOT;
  if (options.root) env.CONTAINER_VOLUMES_ROOT = options.root;
  const result = spawnSync(installed.bin, args, { env, input: options.input ?? '', cwd: options.cwd ?? base, maxBuffer: 1 << 28 });
  return { status: result.status, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

function du(dir: string, ...args: string[]): number {
  return Number(execFileSync('du', ['-s', '-x', ...args, dir], { encoding: 'utf8' }).split('\t')[0]);
}

/** A database container with two volumes, mounted; an app sharing them read-only; an orphan volume with data. */
async function world() {
  const w = realWorld(base);
  const { runtime } = w;
  const db = await runtime.create({ rootfs: w.rootfs('db'), volumes: ['/var/lib/postgres', '/var/log'] });
  await runtime.mount(db.id);
  fs.writeFileSync(path.join(w.rootfs('db'), 'var/lib/postgres/PG_VERSION'), '16\n');
  const app = await runtime.create({ rootfs: w.rootfs('app'), volumesFrom: [`${db.id}:ro`] });
  const gone = await runtime.create({ rootfs: w.rootfs('gone'), volumes: ['/data'] });
  const orphan = gone.volumes[0]?.volumeId as string;
  fs.mkdirSync(path.join(w.volumeDir(orphan), 'sub'));
  fs.writeFileSync(path.join(w.volumeDir(orphan), 'sub/a'), 'a'.repeat(10_000));
  fs.linkSync(path.join(w.volumeDir(orphan), 'sub/a'), path.join(w.volumeDir(orphan), 'a-again'));
  fs.writeFileSync(path.join(w.volumeDir(orphan), 'b'), 'b'.repeat(3000));
  await runtime.remove(gone.id);
  return { ...w, db, app, orphan };
}

describe('the package as installed', () => {
  test('the tarball holds the built code, the docs and the licence, and no sources or tests', () => {
    expect(installed.files).toEqual(expect.arrayContaining(['dist/index.js', 'dist/index.cjs', 'dist/index.d.ts', 'dist/index.d.cts', 'dist/cli.js', 'README.md', 'LICENSE', 'package.json']));
    expect(installed.files.filter((f) => /^(src|test|examples)\//.test(f))).toEqual([]);
    expect(fs.realpathSync(installed.bin)).toBe(path.join(installed.project, 'node_modules/container-volumes/dist/cli.js'));
  });

  test('imported from ESM and from CommonJS, with the types checked by tsc', () => {
    const project = installed.project;
    const story = (load: string) => `${load}
async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cv-import-'));
  fs.mkdirSync(path.join(dir, 'rootfs'));
  const runtime = new ContainerRuntime({ root: path.join(dir, 'state'), mounter: new FakeMounter() });
  const db: ContainerInfo = await runtime.create({ rootfs: path.join(dir, 'rootfs'), volumes: ['/data'] });
  const byPrefix = await runtime.get(db.id.slice(0, 8));
  await runtime.remove(db.id);
  const preview: PruneResult = await runtime.volumes.prune({ dryRun: true });
  const usage: DiskUsage = await runtime.volumes.diskUsage(preview.removed[0] as string, { timeout: 1000 });
  let code: ErrorCode | undefined;
  try {
    await runtime.get('zzz');
  } catch (error) {
    if (error instanceof ContainerVolumesError) code = error.code;
  }
  console.log(JSON.stringify({ same: byPrefix.id === db.id, removed: preview.removed.length, directories: usage.directories, code, contract: typeof mounterContract }));
}
void main();
`;
    fs.writeFileSync(
      path.join(project, 'esm.mts'),
      story(`import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ContainerRuntime, ContainerVolumesError, FakeMounter, type ContainerInfo, type DiskUsage, type ErrorCode, type PruneResult } from 'container-volumes';
import { mounterContract } from 'container-volumes/testing';`),
    );
    fs.writeFileSync(
      path.join(project, 'cjs.cts'),
      story(`import fs = require('node:fs');
import os = require('node:os');
import path = require('node:path');
import cv = require('container-volumes');
import testing = require('container-volumes/testing');
const { ContainerRuntime, ContainerVolumesError, FakeMounter } = cv;
const { mounterContract } = testing;
type ContainerInfo = cv.ContainerInfo;
type DiskUsage = cv.DiskUsage;
type ErrorCode = cv.ErrorCode;
type PruneResult = cv.PruneResult;`),
    );
    const repoTypes = path.resolve('node_modules/@types');
    fs.writeFileSync(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true, outDir: 'out', typeRoots: [repoTypes], types: ['node'] },
        files: ['esm.mts', 'cjs.cts'],
      }),
    );
    const tsc = spawnSync(process.execPath, [path.resolve('node_modules/typescript/bin/tsc'), '-p', project], { encoding: 'utf8' });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    const expected = { same: true, removed: 1, directories: 1, code: 'ERR_CONTAINER_NOT_FOUND', contract: 'object' };
    for (const file of ['out/esm.mjs', 'out/cjs.cjs']) {
      const out = execFileSync(process.execPath, [path.join(project, file)], { cwd: project, encoding: 'utf8' });
      expect({ file, ...JSON.parse(out) }).toEqual({ file, ...expected });
    }
  });
});

describe('container-volumes, the command', () => {
  test('usage errors exit 2, failures exit 1 with the error code, and a missing store is never created', () => {
    const help = cli(['--help'], { root: null });
    expect(help).toMatchObject({ status: 0, stderr: '' });
    expect(help.stdout).toContain('Usage: container-volumes');
    expect(cli([], { root: null }).status).toBe(2);
    for (const args of [['frobnicate'], ['ls', '--bogus'], ['rm'], ['inspect'], ['inspect', 'a', 'b'], ['ls', '--format', 'yaml'], ['ls', '--dry-run'], ['df', '--timeout', 'soon'], ['restore', 'x.tar'], ['volumes']]) {
      const run = cli(args, { root: base });
      expect({ args, status: run.status, stdout: run.stdout }).toEqual({ args, status: 2, stdout: '' });
      expect(run.stderr).toContain('container-volumes --help');
    }
    const noRoot = cli(['ls'], { root: null });
    expect(noRoot.status).toBe(2);
    expect(noRoot.stderr).toContain('CONTAINER_VOLUMES_ROOT');
    const missing = path.join(base, 'no-such-store');
    const run = cli(['ls'], { root: missing });
    expect(run.status).toBe(1);
    expect(run.stderr).toContain(`ERR_STORE_UNAVAILABLE: no store at ${missing}`);
    expect(fs.existsSync(missing)).toBe(false);
  });

  test('ls, inspect, volumes ls and volumes inspect: tables for people, JSON with the API field names, ids with -q, prefixes accepted', async () => {
    const w = await world();
    const runtime = new ContainerRuntime({ root: w.root, mounter: new BindMounter() });
    const ls = cli(['ls'], { root: w.root });
    expect(ls).toMatchObject({ status: 0, stderr: '' });
    expect(ls.stdout.split('\n')[0]).toMatch(/^CONTAINER ID +MOUNTED +VOLUMES +CREATED +ROOTFS$/);
    expect(ls.stdout).toMatch(new RegExp(`^${w.db.id.slice(0, 8)} +yes +2 `, 'm'));
    expect(cli(['ls', '-q'], { root: w.root }).stdout).toBe(`${w.db.id}\n${w.app.id}\n`);
    expect(JSON.parse(cli(['ls', '--format', 'json'], { root: w.root }).stdout)).toEqual(await runtime.list());
    // --root wins over the environment, and a relative one is taken from the working directory.
    expect(cli(['--root', path.relative(base, w.root), 'ls', '-q'], { root: '/nonexistent' }).stdout).toBe(`${w.db.id}\n${w.app.id}\n`);

    expect(JSON.parse(cli(['inspect', w.app.id.slice(0, 6)], { root: w.root }).stdout)).toEqual(await runtime.get(w.app.id));
    expect(cli(['inspect', '--format', 'table', w.db.id], { root: w.root }).stdout).toMatch(/^\/var\/lib\/postgres +[0-9a-f]{8} +rw +created$/m);
    const unknown = cli(['inspect', 'fffffffff'], { root: w.root });
    expect(unknown).toMatchObject({ status: 1, stdout: '' });
    expect(unknown.stderr).toMatch(/^container-volumes: ERR_CONTAINER_NOT_FOUND: .*"fffffffff"/);

    expect(JSON.parse(cli(['volumes', 'ls', '--format', 'json'], { root: w.root }).stdout)).toEqual(await runtime.volumes.list());
    const volumes = cli(['volumes', 'ls'], { root: w.root }).stdout;
    expect(volumes).toMatch(new RegExp(`^${w.orphan.slice(0, 8)} +\\S+ +-$`, 'm'));
    expect(volumes).toContain(`${w.db.id.slice(0, 8)}:/var/log, ${w.app.id.slice(0, 8)}:/var/log:ro`);
    expect(JSON.parse(cli(['volumes', 'inspect', w.orphan.slice(0, 7)], { root: w.root }).stdout)).toEqual(await runtime.volumes.inspect(w.orphan));
  });

  test('an ambiguous prefix exits 1 with ERR_AMBIGUOUS_ID naming the candidates', async () => {
    const w = realWorld(base);
    const ids: string[] = [];
    for (let i = 0; i < 17; i++) ids.push((await w.runtime.create({ rootfs: w.rootfs(`c${i}`) })).id);
    const shared = ids.map((id) => ids.filter((other) => other[0] === id[0])).find((group) => group.length > 1) as string[];
    const run = cli(['inspect', (shared[0] as string)[0] as string], { root: w.root });
    expect(run).toMatchObject({ status: 1, stdout: '' });
    expect(run.stderr).toMatch(/^container-volumes: ERR_AMBIGUOUS_ID: /);
    for (const id of shared) expect(run.stderr).toContain(id);
  });

  test('df: the size of every volume and who uses it, as du counts it', async () => {
    const w = await world();
    const rows = JSON.parse(cli(['df', '--format', 'json'], { root: w.root }).stdout) as { id: string; usedBy: unknown[]; usage: Record<string, unknown> }[];
    const orphan = rows.find((r) => r.id === w.orphan);
    const dir = w.volumeDir(w.orphan);
    expect(orphan?.usage).toEqual({
      apparentBytes: du(dir, '--apparent-size', '-B1'),
      allocatedBytes: du(dir, '-B1'),
      files: 2,
      directories: 2,
      complete: true,
    });
    expect(rows.map((r) => r.id).sort()).toEqual([...w.db.volumes.map((v) => v.volumeId), w.orphan].sort());
    const table = cli(['df'], { root: w.root });
    expect(table).toMatchObject({ status: 0, stderr: '' });
    const kib = `${Math.round(orphan?.usage.apparentBytes as number / 1024)} KiB`;
    expect(table.stdout).toMatch(new RegExp(`^${w.orphan.slice(0, 8)} +${kib} +\\d+ KiB +2 +-$`, 'm'));
    expect(table.stdout).toMatch(new RegExp(`^3 volume\\(s\\), .*; 1 unused, ${kib} reclaimable by prune$`, 'm'));
  });

  test('prune: --dry-run shows and deletes nothing; without a terminal it needs --force; --force deletes', async () => {
    const w = await world();
    const dry = cli(['prune', '--dry-run'], { root: w.root });
    expect(dry).toMatchObject({ status: 0, stdout: `${w.orphan}\n` });
    expect(fs.existsSync(w.volumeDir(w.orphan))).toBe(true);
    expect(JSON.parse(cli(['prune', '--dry-run', '--format', 'json'], { root: w.root }).stdout)).toEqual({ removed: [w.orphan], dryRun: true });

    const refused = cli(['prune'], { root: w.root, input: 'y\n' });
    expect(refused).toMatchObject({ status: 2, stdout: '' });
    expect(refused.stderr).toContain('--force');
    expect(fs.existsSync(w.volumeDir(w.orphan))).toBe(true);

    expect(cli(['prune', '--force'], { root: w.root })).toMatchObject({ status: 0, stdout: `${w.orphan}\n` });
    expect(fs.existsSync(w.volumeDir(w.orphan))).toBe(false);
    expect(cli(['prune', '--force', '-q'], { root: w.root })).toMatchObject({ status: 0, stdout: '' });
  });

  test('prune on a terminal asks, and deletes only on yes', async () => {
    const w = await world();
    // script(1) gives the command a terminal; what we type is its input.
    const onTerminal = (answer: string) =>
      spawnSync('script', ['-qec', `${installed.bin} prune`, '/dev/null'], {
        input: `${answer}\n`,
        encoding: 'utf8',
        env: { ...process.env, CONTAINER_VOLUMES_ROOT: w.root, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` },
      });
    const no = onTerminal('n');
    expect(no.status).toBe(0);
    expect(no.stdout).toContain(w.orphan);
    expect(no.stdout).toContain('Delete them? [y/N]');
    expect(fs.existsSync(w.volumeDir(w.orphan))).toBe(true);
    expect(onTerminal('y').status).toBe(0);
    expect(fs.existsSync(w.volumeDir(w.orphan))).toBe(false);
  });

  test('df shows a progress line on a terminal only, and clears it', async () => {
    const w = await world();
    const run = spawnSync('script', ['-qec', `${installed.bin} df -q`, '/dev/null'], {
      encoding: 'utf8',
      env: { ...process.env, CONTAINER_VOLUMES_ROOT: w.root, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` },
    });
    expect(run.status).toBe(0);
    expect(run.stdout).toContain('\r\x1b[Kdf: volume 1/3');
    // Cleared before the data: each id starts a clean line.
    expect(run.stdout).toMatch(/\r\x1b\[K[0-9a-f]{8}-[0-9a-f-]{27}\r?\n/);
    expect(cli(['df', '-q'], { root: w.root }).stderr).toBe('');
  });

  test('rm: a mounted container is refused without -f; -f -v unmounts it and deletes its unused volumes', async () => {
    const w = await world();
    expect(mountsUnder(w.rootfs('db'))).toHaveLength(2);
    const refused = cli(['rm', w.db.id.slice(0, 8)], { root: w.root });
    expect(refused).toMatchObject({ status: 1, stdout: '' });
    expect(refused.stderr).toMatch(/^container-volumes: ERR_CONTAINER_MOUNTED: /);

    expect(cli(['rm', w.app.id.slice(0, 8)], { root: w.root })).toMatchObject({ status: 0, stdout: `${w.app.id}\n`, stderr: '' });
    expect(cli(['rm', '-f', '-v', w.db.id.slice(0, 8)], { root: w.root })).toMatchObject({ status: 0, stdout: `${w.db.id}\n` });
    expect(mountsUnder(w.rootfs('db'))).toEqual([]);
    for (const v of w.db.volumes) expect(fs.existsSync(w.volumeDir(v.volumeId))).toBe(false);
    expect(fs.existsSync(w.volumeDir(w.orphan))).toBe(true); // not the container's: left to prune
  });

  test('recover mounts again what was detached behind the store\'s back', async () => {
    const w = await world();
    execFileSync('umount', [path.join(w.rootfs('db'), 'var/log')]);
    const run = cli(['recover'], { root: w.root });
    expect(run).toMatchObject({ status: 0, stdout: `mounted again: ${w.db.id} /var/log\n` });
    expect(mountsUnder(w.rootfs('db'))).toHaveLength(2);
    expect(cli(['recover'], { root: w.root })).toMatchObject({ status: 0, stdout: '' });
  });

  test('backup to a file and through a pipe, restore from either: the data comes back', async () => {
    const w = await world();
    const file = path.join(w.dir, 'db.tar');
    const toFile = cli(['backup', w.db.id.slice(0, 8), file], { root: w.root });
    expect(toFile).toMatchObject({ status: 0, stdout: '' });
    expect(toFile.stderr).toContain('Backed up 2 volume(s)');

    const piped = spawnSync(installed.bin, ['backup', w.db.id, '-'], { env: { ...process.env, CONTAINER_VOLUMES_ROOT: w.root }, maxBuffer: 1 << 28 });
    expect(piped.status).toBe(0);
    expect(execFileSync('tar', ['-tf', '-'], { input: piped.stdout, encoding: 'utf8' }).split('\n')[0]).toBe('container-volumes-backup.json');

    for (const [source, input] of [[file, undefined], ['-', piped.stdout]] as const) {
      const rootfs = w.rootfs(`restored-${source === '-' ? 'stdin' : 'file'}`);
      const run = cli(['restore', source, '--rootfs', rootfs], { root: w.root, ...(input ? { input } : {}) });
      expect(run.status).toBe(0);
      const id = run.stdout.trim();
      const restored = await new ContainerRuntime({ root: w.root, mounter: new BindMounter() }).get(id);
      const pg = restored.volumes.find((v) => v.path === '/var/lib/postgres');
      expect(fs.readFileSync(path.join(w.volumeDir(pg?.volumeId as string), 'PG_VERSION'), 'utf8')).toBe('16\n');
    }
    expect(cli(['backup', w.db.id, '-', '--format', 'json'], { root: w.root }).status).toBe(2);
  });
});

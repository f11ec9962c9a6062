/**
 * Bad input to every public method, table-driven, with the fake mounter (no root).
 *
 * Every case runs against a realistic store (see `buildWorld`) and checks three things:
 *   1. the call rejects (a constructor throws) with the exact `code`;
 *   2. the message names the offending value, path or container where it sensibly can;
 *   3. nothing changed: the whole sandbox on disk (state root and every rootfs), what the
 *      fake mounter has mounted under each rootfs and anywhere on the "host", and the
 *      number of mount/unmount calls it received.
 * Cases of one describe block share a world, rebuilt after any test that did not end by
 * verifying that nothing changed (see `useWorld`).

 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeEach, describe, expect, test } from '@jest/globals';
import {
  ContainerRuntime,
  ContainerVolumesError,
  FakeMounter,
  VolumeManager,
  type ContainerInfo,
  type ErrorCode,
  type MountedVolume,
} from '../../src/index.js';
import { cleanupTemp, expectCode, sandbox, snapshotTree } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

// ---------------------------------------------------------------------------------------
// The world every case runs against
// ---------------------------------------------------------------------------------------

const ROOTFS_NAMES = ['db', 'app', 'web', 'empty', 'spare'] as const;
type RootfsName = (typeof ROOTFS_NAMES)[number];

interface World {
  /** The sandbox directory: holds the state root and every rootfs; snapshotted whole. */
  dir: string;
  root: string;
  fake: FakeMounter;
  runtime: ContainerRuntime;
  volumes: VolumeManager;
  rootfs: Record<RootfsName, string>;
  /** volumes /var/lib/postgres (copied up from its rootfs) and /var/log. */
  db: ContainerInfo;
  /** shares db's volumes read-only (`--volumes-from db:ro`) and has its own /cache. */
  app: ContainerInfo;
  /** volume /srv/www; mounted. */
  web: ContainerInfo;
  /** no volumes; a target for sharing. */
  empty: ContainerInfo;
  pgVolume: string;
  logVolume: string;
  cacheVolume: string;
  webVolume: string;
  /** A volume whose container was removed without `volumes: true`: referenced by nobody. */
  orphanVolume: string;
  /** A regular file, a symlink to the host's `/` and a symlink to the state root, all beside the store. */
  notADir: string;
  linkToSlash: string;
  linkIntoStore: string;
  configFile(containerId: string): string;
}

const volumeAt = (c: ContainerInfo, at: string): string => {
  const found = c.volumes.find((v) => v.path === at);
  if (!found) throw new Error(`fixture: ${c.id} has no volume at ${at}`);
  return found.volumeId;
};

async function buildWorld(): Promise<World> {
  const fake = new FakeMounter();
  const sb = await sandbox(fake);
  const rootfs = {} as Record<RootfsName, string>;
  for (const name of ROOTFS_NAMES) {
    const dir = await sb.rootfs(name);
    // In every rootfs: a regular file where a volume could be asked for, and a symlink back to the rootfs itself.
    await fs.mkdir(path.join(dir, 'etc'));
    await fs.writeFile(path.join(dir, 'etc/hostname'), `${name}\n`);
    await fs.symlink('..', path.join(dir, 'up'));
    rootfs[name] = dir;
  }
  await fs.mkdir(path.join(rootfs.db, 'var/lib/postgres'), { recursive: true });
  await fs.writeFile(path.join(rootfs.db, 'var/lib/postgres/PG_VERSION'), '16\n');

  const runtime = sb.runtime;
  const db = await runtime.create({ rootfs: rootfs.db, volumes: ['/var/lib/postgres', '/var/log'] });
  const app = await runtime.create({ rootfs: rootfs.app, volumes: ['/cache'], volumesFrom: [`${db.id}:ro`] });
  const created = await runtime.create({ rootfs: rootfs.web, volumes: ['/srv/www'] });
  const web = await runtime.mount(created.id);
  const empty = await runtime.create({ rootfs: rootfs.empty });
  const scratch = await runtime.create({ rootfs: rootfs.spare, volumes: ['/scratch'] });
  await runtime.remove(scratch.id);

  const notADir = path.join(sb.dir, 'not-a-directory');
  await fs.writeFile(notADir, 'plain file\n');
  const linkToSlash = path.join(sb.dir, 'link-to-slash');
  await fs.symlink('/', linkToSlash);
  const linkIntoStore = path.join(sb.dir, 'link-into-store');
  await fs.symlink(path.join(sb.root, 'volumes'), linkIntoStore);

  return {
    dir: sb.dir,
    root: sb.root,
    fake,
    runtime,
    volumes: runtime.volumes,
    rootfs,
    db,
    app,
    web,
    empty,
    pgVolume: volumeAt(db, '/var/lib/postgres'),
    logVolume: volumeAt(db, '/var/log'),
    cacheVolume: volumeAt(app, '/cache'),
    webVolume: volumeAt(web, '/srv/www'),
    orphanVolume: volumeAt(scratch, '/scratch'),
    notADir,
    linkToSlash,
    linkIntoStore,
    configFile: (id) => path.join(sb.root, 'containers', `${id}.json`),
  };
}

/** The world of a describe block; call it to get the current one. */
interface WorldHandle {
  (): World;
  /** The test may change (or has changed) the world: the next test gets a fresh one. */
  dirty(): void;
  /** The test verified that the world is exactly as it was: the next test may reuse it. */
  clean(): void;
}

/**
 * One world per describe block, rebuilt (and `then` applied again) before any test that
 * follows one that did not end by verifying that nothing changed — a failed case or a
 * test that changes things on purpose. So a case that does damage never
 * leaks into the next, and the thousand cases that change nothing share a world.
 */
function useWorld(then?: (w: World) => Promise<void>): WorldHandle {
  let world: World | undefined;
  let dirty = true;
  beforeEach(async () => {
    if (world && !dirty) return;
    world = await buildWorld();
    await then?.(world);
    dirty = false;
  });
  const handle = (() => {
    if (!world) throw new Error('fixture: the world was not built');
    return world;
  }) as WorldHandle;
  handle.dirty = () => void (dirty = true);
  handle.clean = () => void (dirty = false);
  return handle;
}

interface Observed {
  tree: Record<string, string>;
  mounts: Record<string, MountedVolume[]>;
  mountCalls: number;
}

/** Everything a bad call could damage. */
async function observe(w: World): Promise<Observed> {
  const mounts: Record<string, MountedVolume[]> = {};
  for (const name of ROOTFS_NAMES) mounts[name] = await w.fake.list(w.rootfs[name]);
  mounts['(anywhere on the host)'] = await w.fake.list('/');
  return {
    tree: await snapshotTree(w.dir),
    mounts,
    mountCalls: w.fake.calls.filter((call) => call.op !== 'list').length,
  };
}

// ---------------------------------------------------------------------------------------
// Cases and how they run
// ---------------------------------------------------------------------------------------

interface Case {
  name: string;
  /** The bad call. May throw synchronously (constructors) or return a rejecting promise. */
  call: (w: World) => unknown;
  code: ErrorCode;
  /** What the message must contain: the offending value, path, container or option. */
  names?: (w: World) => string[];
}

/** How a value shows in a message: strings quoted (as JSON, so NUL and newlines are visible). */
const shown = (value: unknown): string[] => (typeof value === 'string' ? [JSON.stringify(value)] : []);

async function expectRefused(world: WorldHandle, c: Case): Promise<void> {
  const w = world();
  world.dirty();
  const before = await observe(w);
  const error = await expectCode(Promise.resolve().then(() => c.call(w)), c.code);
  expect(error).toBeInstanceOf(ContainerVolumesError);
  for (const part of c.names?.(w) ?? []) expect(error.message).toContain(part);
  expect(await observe(w)).toEqual(before);
  world.clean();
}

function runCases(cases: readonly Case[], world: WorldHandle): void {
  for (const c of cases) {
    const title = `${c.name} → ${c.code}`;
    test(title, () => expectRefused(world, c));
  }
}

const UNKNOWN = '0f0e0d0c-0b0a-4908-8706-050403020100';
const NIL_UUID = '00000000-0000-0000-0000-000000000000';

// ---------------------------------------------------------------------------------------
// Constructors
// ---------------------------------------------------------------------------------------

describe('constructors: new ContainerRuntime(options) and new VolumeManager(options)', () => {
  const world = useWorld();
  const mounterWithout = (missing: string) => {
    const all: Record<string, unknown> = { mount: async () => {}, unmount: async () => {}, list: async () => [] };
    delete all[missing];
    return all;
  };
  const OPTIONS: { name: string; options: (w: World) => unknown; names: string[] }[] = [
    { name: 'options undefined', options: () => undefined, names: ['options'] },
    { name: 'options null', options: () => null, names: ['options', 'null'] },
    { name: 'options a string (the root)', options: (w) => w.root, names: ['options'] },
    { name: 'options a number', options: () => 42, names: ['options'] },
    { name: 'options an array', options: (w) => [w.root, w.fake], names: ['options', 'array'] },
    { name: 'options {}', options: () => ({}), names: ['root'] },
    { name: 'root missing', options: (w) => ({ mounter: w.fake }), names: ['root'] },
    { name: "root ''", options: (w) => ({ root: '', mounter: w.fake }), names: ['root', '""'] },
    { name: "root relative 'state'", options: (w) => ({ root: 'state', mounter: w.fake }), names: ['root', '"state"', 'absolute'] },
    { name: "root relative './'", options: (w) => ({ root: './', mounter: w.fake }), names: ['root', '"./"', 'absolute'] },
    { name: 'root a number', options: (w) => ({ root: 42, mounter: w.fake }), names: ['root', 'number'] },
    { name: 'root null', options: (w) => ({ root: null, mounter: w.fake }), names: ['root', 'null'] },
    { name: 'root with a NUL byte', options: (w) => ({ root: `${w.root}\0x`, mounter: w.fake }), names: ['root'] },
    { name: 'mounter missing', options: (w) => ({ root: w.root }), names: ['mounter'] },
    { name: 'mounter null', options: (w) => ({ root: w.root, mounter: null }), names: ['mounter'] },
    { name: 'mounter {}', options: (w) => ({ root: w.root, mounter: {} }), names: ['mounter'] },
    { name: 'mounter a function', options: (w) => ({ root: w.root, mounter: () => {} }), names: ['mounter'] },
    { name: 'mounter without mount', options: (w) => ({ root: w.root, mounter: mounterWithout('mount') }), names: ['mounter', 'mount'] },
    { name: 'mounter without unmount', options: (w) => ({ root: w.root, mounter: mounterWithout('unmount') }), names: ['unmount'] },
    { name: 'mounter without list', options: (w) => ({ root: w.root, mounter: mounterWithout('list') }), names: ['mounter', 'list'] },
    {
      name: 'mounter whose mount is not a function',
      options: (w) => ({ root: w.root, mounter: { ...mounterWithout('mount'), mount: 'mount' } }),
      names: ['mounter'],
    },
    { name: 'an unknown option (typo: mounters)', options: (w) => ({ root: w.root, mounters: w.fake }), names: ['mounters'] },
    { name: 'an extra unknown option', options: (w) => ({ root: w.root, mounter: w.fake, readOnly: true }), names: ['readOnly'] },
  ];
  const CLASSES = [
    { name: 'ContainerRuntime', make: (options: unknown) => new ContainerRuntime(options as never) },
    { name: 'VolumeManager', make: (options: unknown) => new VolumeManager(options as never) },
  ];
  runCases(
    CLASSES.flatMap((cls) =>
      OPTIONS.map(
        (o): Case => ({
          name: `new ${cls.name}(${o.name})`,
          call: (w) => cls.make(o.options(w)),
          code: 'ERR_INVALID_ARGUMENT',
          names: () => o.names,
        }),
      ),
    ),
    world,
  );

  // The root is only opened on first use: a root that cannot be a directory fails there, creating nothing.
  runCases(
    [
      { name: 'root is a regular file', root: (w: World) => w.notADir },
      { name: 'root is inside a regular file', root: (w: World) => path.join(w.notADir, 'state') },
    ].flatMap(({ name, root }): Case[] => [
      {
        name: `ContainerRuntime.list() when the ${name}`,
        call: (w) => new ContainerRuntime({ root: root(w), mounter: w.fake }).list(),
        code: 'ERR_STORE_UNAVAILABLE',
        names: (w) => [root(w)],
      },
      {
        name: `VolumeManager.prune() when the ${name}`,
        call: (w) => new VolumeManager({ root: root(w), mounter: w.fake }).prune(),
        code: 'ERR_STORE_UNAVAILABLE',
        names: (w) => [root(w)],
      },
    ]),
    world,
  );
});

// ---------------------------------------------------------------------------------------
// Ids: every method that takes one
// ---------------------------------------------------------------------------------------

describe('ids: any string that names nothing is ERR_*_NOT_FOUND, well-formed or not; a non-string is ERR_INVALID_ARGUMENT', () => {
  const world = useWorld();

  /** Each bad id is a variant of a real one (`existing`), so a lax check would hit a real container or volume. */
  const MALFORMED: { label: string; value: (existing: string) => unknown }[] = [
    { label: "''", value: () => '' },
    { label: "'postgres' (a name: not hex)", value: () => 'postgres' },
    { label: "a prefix in upper case 'ABCDEF'", value: () => 'ABCDEF' },
    { label: 'a prefix with a trailing slash', value: (id) => `${id.slice(0, 8)}/` },
    { label: 'longer than an id', value: (id) => `${id}0` },
    { label: 'upper-case uuid', value: (id) => id.toUpperCase() },
    { label: 'uuid in braces', value: (id) => `{${id}}` },
    { label: 'uuid without dashes', value: (id) => id.replaceAll('-', '') },
    { label: 'uuid with a leading space', value: (id) => ` ${id}` },
    { label: 'uuid with a trailing newline', value: (id) => `${id}\n` },
    { label: 'uuid with a NUL byte', value: (id) => `${id}\0` },
    { label: "'<uuid>.json'", value: (id) => `${id}.json` },
    { label: "'<uuid>/..'", value: (id) => `${id}/..` },
    { label: "'../<uuid>'", value: (id) => `../${id}` },
    { label: "'..'", value: () => '..' },
    { label: "'../../etc/passwd'", value: () => '../../etc/passwd' },
    { label: "'/'", value: () => '/' },
    { label: 'a number', value: () => 42 },
    { label: 'null', value: () => null },
    { label: 'undefined', value: () => undefined },
    { label: 'an object { id }', value: (id) => ({ id }) },
    { label: 'an array [id]', value: (id) => [id] },
  ];

  interface IdMethod {
    name: string;
    what: 'container' | 'volume';
    /** The real id the malformed variants are made from. */
    existing: (w: World) => string;
    call: (w: World, id: unknown) => Promise<unknown>;
  }
  const asId = (id: unknown) => id as string;
  const METHODS: IdMethod[] = [
    { name: 'runtime.get', what: 'container', existing: (w) => w.db.id, call: (w, id) => w.runtime.get(asId(id)) },
    { name: 'runtime.ociMounts', what: 'container', existing: (w) => w.db.id, call: (w, id) => w.runtime.ociMounts(asId(id)) },
    { name: 'runtime.lxcMountEntries', what: 'container', existing: (w) => w.db.id, call: (w, id) => w.runtime.lxcMountEntries(asId(id)) },
    { name: 'runtime.runHandler', what: 'container', existing: (w) => w.db.id, call: (w, id) => w.runtime.runHandler(asId(id), () => 'ran') },
    {
      name: 'runtime.backup',
      what: 'container',
      existing: (w) => w.db.id,
      call: (w, id) => w.runtime.backup(asId(id), path.join(w.dir, 'backup.tar')),
    },
    { name: 'runtime.mount', what: 'container', existing: (w) => w.db.id, call: (w, id) => w.runtime.mount(asId(id)) },
    { name: 'runtime.unmount', what: 'container', existing: (w) => w.web.id, call: (w, id) => w.runtime.unmount(asId(id)) },
    { name: 'runtime.remove', what: 'container', existing: (w) => w.empty.id, call: (w, id) => w.runtime.remove(asId(id)) },
    {
      name: 'runtime.remove(…, { force, volumes })',
      what: 'container',
      existing: (w) => w.web.id,
      call: (w, id) => w.runtime.remove(asId(id), { force: true, volumes: true }),
    },
    {
      name: 'runtime.createVolumes',
      what: 'container',
      existing: (w) => w.empty.id,
      call: (w, id) => w.runtime.createVolumes(asId(id), ['/new']),
    },
    {
      name: 'runtime.shareVolumesFrom (target)',
      what: 'container',
      existing: (w) => w.empty.id,
      call: (w, id) => w.runtime.shareVolumesFrom(asId(id), w.db.id),
    },
    {
      name: 'runtime.shareVolumesFrom (source)',
      what: 'container',
      existing: (w) => w.db.id,
      call: (w, id) => w.runtime.shareVolumesFrom(w.empty.id, asId(id)),
    },
    { name: 'volumes.mount', what: 'container', existing: (w) => w.db.id, call: (w, id) => w.volumes.mount(asId(id)) },
    { name: 'volumes.unmount', what: 'container', existing: (w) => w.web.id, call: (w, id) => w.volumes.unmount(asId(id)) },
    {
      name: 'volumes.createVolumes',
      what: 'container',
      existing: (w) => w.empty.id,
      call: (w, id) => w.volumes.createVolumes(asId(id), ['/new']),
    },
    {
      name: 'volumes.shareVolumesFrom (target)',
      what: 'container',
      existing: (w) => w.empty.id,
      call: (w, id) => w.volumes.shareVolumesFrom(asId(id), w.db.id, { mode: 'ro' }),
    },
    {
      name: 'volumes.shareVolumesFrom (source)',
      what: 'container',
      existing: (w) => w.db.id,
      call: (w, id) => w.volumes.shareVolumesFrom(w.empty.id, asId(id), { mode: 'ro' }),
    },
    { name: 'volumes.inspect', what: 'volume', existing: (w) => w.pgVolume, call: (w, id) => w.volumes.inspect(asId(id)) },
    { name: 'volumes.remove', what: 'volume', existing: (w) => w.orphanVolume, call: (w, id) => w.volumes.remove(asId(id)) },
    { name: 'volumes.diskUsage', what: 'volume', existing: (w) => w.pgVolume, call: (w, id) => w.volumes.diskUsage(asId(id)) },
  ];

  /** Well-formed ids that name nothing of the right kind. */
  const UNKNOWN_IDS: { label: string; value: (w: World, what: 'container' | 'volume') => string }[] = [
    { label: 'an unknown uuid', value: () => UNKNOWN },
    { label: 'the nil uuid', value: () => NIL_UUID },
    {
      label: 'an id of the other kind',
      value: (w, what) => (what === 'container' ? w.orphanVolume : w.db.id),
    },
  ];

  for (const method of METHODS) {
    describe(method.name, () => {
      runCases(
        [
          ...MALFORMED.map(
            (bad): Case => ({
              name: `malformed id: ${bad.label}`,
              call: (w) => method.call(w, bad.value(method.existing(w))),
              // Never a path: `../<uuid>` or `<uuid>/..` must not reach a real container or volume.
              code: typeof bad.value('') !== 'string' ? 'ERR_INVALID_ARGUMENT' : method.what === 'container' ? 'ERR_CONTAINER_NOT_FOUND' : 'ERR_VOLUME_NOT_FOUND',
              names: (w) => [`${method.what} id`, ...shown(bad.value(method.existing(w)))],
            }),
          ),
          ...UNKNOWN_IDS.map(
            (unknown): Case => ({
              name: `well-formed but ${unknown.label}`,
              call: (w) => method.call(w, unknown.value(w, method.what)),
              code: method.what === 'container' ? 'ERR_CONTAINER_NOT_FOUND' : 'ERR_VOLUME_NOT_FOUND',
              names: (w) => [unknown.value(w, method.what)],
            }),
          ),
        ],
        world,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------
// prune(options) and diskUsage(volumeId, options)
// ---------------------------------------------------------------------------------------

describe('volumes.prune(options) and volumes.diskUsage(volumeId, options) refuse bad options (ERR_INVALID_ARGUMENT)', () => {
  const world = useWorld();
  const prune = (options: unknown) => (w: World) => w.volumes.prune(options as never);
  const diskUsage = (options: unknown) => (w: World) => w.volumes.diskUsage(w.pgVolume, options as never);
  runCases(
    [
      { name: 'prune(null)', call: prune(null), code: 'ERR_INVALID_ARGUMENT', names: () => ['options', 'null'] },
      { name: "prune('dry-run')", call: prune('dry-run'), code: 'ERR_INVALID_ARGUMENT', names: () => ['options'] },
      { name: "prune({ dryRun: 'yes' })", call: prune({ dryRun: 'yes' }), code: 'ERR_INVALID_ARGUMENT', names: () => ['dryRun'] },
      { name: 'prune({ dryRun: 1 })', call: prune({ dryRun: 1 }), code: 'ERR_INVALID_ARGUMENT', names: () => ['dryRun'] },
      { name: 'prune({ dryrun: true }) (typo)', call: prune({ dryrun: true }), code: 'ERR_INVALID_ARGUMENT', names: () => ['dryrun'] },
      { name: 'diskUsage(id, 1000)', call: diskUsage(1000), code: 'ERR_INVALID_ARGUMENT', names: () => ['options'] },
      { name: 'diskUsage(id, { timeout: 0 })', call: diskUsage({ timeout: 0 }), code: 'ERR_INVALID_ARGUMENT', names: () => ['timeout'] },
      { name: 'diskUsage(id, { timeout: -1 })', call: diskUsage({ timeout: -1 }), code: 'ERR_INVALID_ARGUMENT', names: () => ['timeout'] },
      { name: 'diskUsage(id, { timeout: 1.5 })', call: diskUsage({ timeout: 1.5 }), code: 'ERR_INVALID_ARGUMENT', names: () => ['timeout'] },
      { name: "diskUsage(id, { timeout: '10' })", call: diskUsage({ timeout: '10' }), code: 'ERR_INVALID_ARGUMENT', names: () => ['timeout'] },
      { name: 'diskUsage(id, { signal: {} })', call: diskUsage({ signal: {} }), code: 'ERR_INVALID_ARGUMENT', names: () => ['signal'] },
      { name: "diskUsage(id, { onProgress: 'x' })", call: diskUsage({ onProgress: 'x' }), code: 'ERR_INVALID_ARGUMENT', names: () => ['onProgress'] },
      { name: 'diskUsage(id, { deadline: 5 }) (unknown)', call: diskUsage({ deadline: 5 }), code: 'ERR_INVALID_ARGUMENT', names: () => ['deadline'] },
    ],
    world,
  );
});

// ---------------------------------------------------------------------------------------
// Volume paths: create and createVolumes
// ---------------------------------------------------------------------------------------

describe('volume paths: create and createVolumes refuse bad paths (ERR_INVALID_VOLUME_PATH)', () => {
  const world = useWorld();

  const BAD_PATHS: { label: string; value: unknown; rule: string }[] = [
    { label: 'relative', value: 'var/log', rule: 'absolute' },
    { label: "relative './var/log'", value: './var/log', rule: 'absolute' },
    { label: "relative '..'", value: '..', rule: 'absolute' },
    { label: "''", value: '', rule: 'absolute' },
    { label: "'/'", value: '/', rule: "'/'" },
    { label: "'//'", value: '//', rule: "'/'" },
    { label: "'/.'", value: '/.', rule: "'/'" },
    { label: "'/./'", value: '/./', rule: "'/'" },
    { label: "'/a/../b'", value: '/a/../b', rule: "'..'" },
    { label: "'/..'", value: '/..', rule: "'..'" },
    { label: "'/../etc'", value: '/../etc', rule: "'..'" },
    { label: "'/var/log/..'", value: '/var/log/..', rule: "'..'" },
    { label: "'/var/log/../'", value: '/var/log/../', rule: "'..'" },
    { label: 'a NUL byte', value: '/var/lo\0g', rule: 'NUL' },
    { label: 'a trailing NUL byte', value: '/var/log\0', rule: 'NUL' },
    { label: '4096 bytes (PATH_MAX counts the NUL)', value: `/${'a/'.repeat(2047)}a`, rule: 'PATH_MAX' },
    { label: 'over 4096 bytes', value: '/abc'.repeat(1100), rule: 'PATH_MAX' },
    { label: 'over 4096 bytes in 2732 characters (bytes count)', value: '/é'.repeat(1366), rule: 'PATH_MAX' },
    { label: 'a 256-byte component', value: `/var/${'x'.repeat(256)}`, rule: 'NAME_MAX' },
    { label: 'a 256-byte component in 128 characters', value: `/${'é'.repeat(128)}/log`, rule: 'NAME_MAX' },
    { label: 'a number', value: 42, rule: 'must be a string' },
    { label: 'null', value: null, rule: 'must be a string' },
    { label: 'undefined', value: undefined, rule: 'must be a string' },
    { label: 'true', value: true, rule: 'must be a string' },
    { label: 'an object', value: { path: '/var/log' }, rule: 'must be a string' },
    { label: 'a nested array', value: ['/var/log'], rule: 'must be a string' },
  ];

  const asPaths = (paths: unknown[]) => paths as string[];
  const METHODS: { name: string; call: (w: World, bad: unknown) => Promise<unknown> }[] = [
    { name: 'runtime.create', call: (w, bad) => w.runtime.create({ rootfs: w.rootfs.spare, volumes: asPaths([bad]) }) },
    {
      name: 'runtime.create (after a good path, with a source)',
      call: (w, bad) => w.runtime.create({ rootfs: w.rootfs.spare, volumes: asPaths(['/data', bad]), volumesFrom: [w.db.id] }),
    },
    { name: 'runtime.createVolumes', call: (w, bad) => w.runtime.createVolumes(w.db.id, asPaths([bad])) },
    { name: 'volumes.createVolumes (after a good path)', call: (w, bad) => w.volumes.createVolumes(w.empty.id, asPaths(['/data', bad])) },
  ];

  for (const method of METHODS) {
    describe(method.name, () => {
      runCases(
        BAD_PATHS.map(
          (bad): Case => ({
            name: `path ${bad.label}`,
            call: (w) => method.call(w, bad.value),
            code: 'ERR_INVALID_VOLUME_PATH',
            names: () => [bad.rule, ...shown(bad.value)],
          }),
        ),
        world,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------
// create(spec)
// ---------------------------------------------------------------------------------------

describe('runtime.create(spec)', () => {
  const world = useWorld();
  const create = (w: World, spec: unknown) => w.runtime.create(spec as never);
  const withRootfs = (w: World, rest: Record<string, unknown>) => create(w, { rootfs: w.rootfs.spare, ...rest });

  describe('the spec itself', () => {
    runCases(
      [
        { name: 'no spec', spec: undefined, names: ['spec'] },
        { name: 'null', spec: null, names: ['spec', 'null'] },
        { name: 'a string (the rootfs)', spec: '/srv/rootfs', names: ['spec'] },
        { name: 'a number', spec: 42, names: ['spec', 'number'] },
        { name: 'an array', spec: ['/srv/rootfs'], names: ['spec', 'array'] },
      ].map(({ name, spec, names }): Case => ({ name, call: (w) => create(w, spec), code: 'ERR_INVALID_ARGUMENT', names: () => names })),
      world,
    );
    runCases(
      [
        { name: "unknown key 'volume' (typo for volumes)", rest: { volume: ['/data'] }, names: ['volume'] },
        { name: "unknown key 'volumes_from'", rest: { volumes_from: [] }, names: ['volumes_from'] },
        { name: "unknown key 'readOnly'", rest: { readOnly: true }, names: ['readOnly'] },
        { name: 'copyUp a string', rest: { volumes: ['/data'], copyUp: 'false' }, names: ['copyUp', '"false"'] },
        { name: 'copyUp 0', rest: { volumes: ['/data'], copyUp: 0 }, names: ['copyUp', 'number'] },
        { name: 'copyUp null', rest: { volumes: ['/data'], copyUp: null }, names: ['copyUp', 'null'] },
        { name: 'volumes a string', rest: { volumes: '/var/log' }, names: ['array', '"/var/log"'] },
        { name: 'volumes an object', rest: { volumes: { 0: '/var/log', length: 1 } }, names: ['array'] },
        { name: 'volumes a number', rest: { volumes: 1 }, names: ['array'] },
        { name: 'volumes true', rest: { volumes: true }, names: ['array'] },
        {
          name: 'volumes null',
          rest: { volumes: null },
          names: ['array'],
        },
      ].map(
        ({ name, rest, names }): Case => ({
          name,
          call: (w) => withRootfs(w, rest),
          code: 'ERR_INVALID_ARGUMENT',
          names: () => names,
        }),
      ),
      world,
    );
  });

  describe('rootfs', () => {
    const ROOTFS: { name: string; rootfs: (w: World) => unknown; names: (w: World) => string[] }[] = [
      { name: 'missing', rootfs: () => undefined, names: () => ['rootfs'] },
      { name: 'null', rootfs: () => null, names: () => ['rootfs', 'null'] },
      { name: 'a number', rootfs: () => 42, names: () => ['rootfs', 'number'] },
      { name: 'an object', rootfs: (w) => ({ path: w.rootfs.spare }), names: () => ['rootfs', 'object'] },
      { name: "''", rootfs: () => '', names: () => ['rootfs', '""'] },
      { name: 'relative', rootfs: () => 'rootfs/spare', names: () => ['"rootfs/spare"', 'absolute'] },
      { name: "relative './'", rootfs: () => './', names: () => ['"./"'] },
      { name: 'with a NUL byte', rootfs: (w) => `${w.rootfs.spare}\0`, names: () => ['rootfs'] },
      { name: "'/'", rootfs: () => '/', names: () => ['"/"'] },
      { name: "'/' spelled '//'", rootfs: () => '//', names: () => ['"//"'] },
      { name: 'a symlink to /', rootfs: (w) => w.linkToSlash, names: (w) => [JSON.stringify(w.linkToSlash)] },
      { name: 'missing on disk', rootfs: (w) => path.join(w.dir, 'rootfs/nope'), names: (w) => [path.join(w.dir, 'rootfs/nope')] },
      { name: 'a regular file', rootfs: (w) => w.notADir, names: (w) => [w.notADir, 'not a directory'] },
      { name: 'a path through a regular file', rootfs: (w) => path.join(w.notADir, 'x'), names: (w) => [w.notADir] },
      { name: 'the state root', rootfs: (w) => w.root, names: (w) => [w.root, 'overlaps'] },
      { name: 'the state root with a trailing slash', rootfs: (w) => `${w.root}/`, names: (w) => [w.root, 'overlaps'] },
      { name: "the store's volumes/", rootfs: (w) => path.join(w.root, 'volumes'), names: () => ['overlaps'] },
      { name: 'a volume directory', rootfs: (w) => path.join(w.root, 'volumes', w.pgVolume), names: (w) => [w.pgVolume, 'overlaps'] },
      { name: "the store's containers/", rootfs: (w) => path.join(w.root, 'containers'), names: () => ['overlaps'] },
      { name: 'a symlink into the store', rootfs: (w) => w.linkIntoStore, names: (w) => [w.linkIntoStore, 'overlaps'] },
      { name: 'a parent of the state root', rootfs: (w) => w.dir, names: (w) => [w.dir, 'overlaps'] },
      { name: 'a parent of the state root, unclean', rootfs: (w) => `${w.rootfs.spare}/../..`, names: () => ['overlaps'] },
    ];
    const SPECS: { name: string; rest: (w: World) => Record<string, unknown> }[] = [
      { name: 'no volumes', rest: () => ({}) },
      { name: 'with volumes and volumesFrom', rest: (w) => ({ volumes: ['/data'], volumesFrom: [w.db.id] }) },
    ];
    runCases(
      SPECS.flatMap((spec) =>
        ROOTFS.map(
          (r): Case => ({
            name: `rootfs ${r.name} (${spec.name})`,
            call: (w) => create(w, { rootfs: r.rootfs(w), ...spec.rest(w) }),
            code: 'ERR_INVALID_ROOTFS',
            names: r.names,
          }),
        ),
      ),
      world,
    );
  });

  describe('volumesFrom', () => {
    const ENTRIES: { name: string; volumesFrom: (w: World) => unknown; code: ErrorCode; names: (w: World) => string[] }[] = [
      // not an array of strings
      { name: 'a string', volumesFrom: (w) => w.db.id, code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom', 'array'] },
      { name: 'an object', volumesFrom: (w) => ({ [w.db.id]: 'ro' }), code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom'] },
      { name: 'null', volumesFrom: () => null, code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom', 'null'] },
      { name: 'a number', volumesFrom: () => 1, code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom', 'number'] },
      { name: 'an entry that is a number', volumesFrom: () => [42], code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom', 'number'] },
      { name: 'an entry that is null', volumesFrom: () => [null], code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom', 'null'] },
      {
        name: 'an entry that is an object',
        volumesFrom: (w) => [{ id: w.db.id, mode: 'ro' }],
        code: 'ERR_INVALID_ARGUMENT',
        names: () => ['volumesFrom', 'object'],
      },
      { name: 'a nested array', volumesFrom: (w) => [[w.db.id]], code: 'ERR_INVALID_ARGUMENT', names: () => ['volumesFrom', 'array'] },
      {
        name: 'a good entry, then a number',
        volumesFrom: (w) => [w.db.id, 7],
        code: 'ERR_INVALID_ARGUMENT',
        names: () => ['volumesFrom'],
      },
      // unknown containers
      { name: 'an unknown id', volumesFrom: () => [UNKNOWN], code: 'ERR_CONTAINER_NOT_FOUND', names: () => [UNKNOWN] },
      { name: "an unknown id with ':ro'", volumesFrom: () => [`${UNKNOWN}:ro`], code: 'ERR_CONTAINER_NOT_FOUND', names: () => [UNKNOWN] },
      {
        name: 'a known id, then an unknown one',
        volumesFrom: (w) => [w.db.id, `${UNKNOWN}:rw`],
        code: 'ERR_CONTAINER_NOT_FOUND',
        names: () => [UNKNOWN],
      },
      { name: 'a volume id', volumesFrom: (w) => [w.pgVolume], code: 'ERR_CONTAINER_NOT_FOUND', names: (w) => [w.pgVolume] },
      // malformed ids
      ...(
        [
          ['upper-case uuid', (w: World) => w.db.id.toUpperCase()],
          ["upper-case uuid with ':ro'", (w: World) => `${w.db.id.toUpperCase()}:ro`],
          ["''", () => ''],
          ["':ro'", () => ':ro'],
          ["'postgres'", () => 'postgres'],
          ["'..'", () => '..'],
          ["'../<id>'", (w: World) => `../${w.db.id}`],
          ["'<id>/..'", (w: World) => `${w.db.id}/..`],
          ["'<id>/x:ro'", (w: World) => `${w.db.id}/x:ro`],
          ["'../../etc:ro'", () => '../../etc:ro'],
          ['an id with a NUL byte', (w: World) => `${w.db.id}\0`],
          ["' <id>'", (w: World) => ` ${w.db.id}`],
        ] as const
      ).map(([name, entry]) => ({
        name: `malformed: ${name}`,
        volumesFrom: (w: World) => [entry(w)],
        code: 'ERR_CONTAINER_NOT_FOUND' as const,
        names: () => ['no such container', 'not a valid container id'],
      })),
      // bad modes
      ...(['', 'rx', 'ro,z', 'z', 'RW', 'RO', 'ro:rw', ' ro', 'ro ', 'readonly', 'w'] as const).map((mode) => ({
        name: `mode '${mode}'`,
        volumesFrom: (w: World) => [`${w.db.id}:${mode}`],
        code: 'ERR_INVALID_MODE' as const,
        names: (w: World) => [JSON.stringify(mode), `${w.db.id}:${mode}`],
      })),
      {
        name: "a malformed id with mode 'rx'",
        volumesFrom: () => ['nonexistent:rx'],
        code: 'ERR_INVALID_MODE',
        names: () => ['"rx"', 'nonexistent:rx'],
      },
      {
        name: "a good entry, then mode 'rx'",
        volumesFrom: (w) => [w.db.id, `${w.app.id}:rx`],
        code: 'ERR_INVALID_MODE',
        names: (w) => [`${w.app.id}:rx`],
      },
    ];
    runCases(
      ENTRIES.map(
        (e): Case => ({
          name: `volumesFrom ${e.name}`,
          call: (w) => withRootfs(w, { volumes: ['/data'], volumesFrom: e.volumesFrom(w) }),
          code: e.code,
          names: e.names,
        }),
      ),
      world,
    );
  });

  describe('paths the rootfs cannot take (the volumes made before are deleted again)', () => {
    runCases(
      [
        { name: 'a regular file', at: '/etc/hostname', code: 'ERR_MOUNT_POINT_NOT_DIRECTORY' as const },
        { name: 'below a regular file', at: '/etc/hostname/x', code: 'ERR_MOUNT_POINT_NOT_DIRECTORY' as const },
        { name: 'a symlink resolving to the rootfs itself', at: '/up', code: 'ERR_INVALID_VOLUME_PATH' as const },
        { name: 'the directory of another path through a symlink', at: '/up/data', code: 'ERR_DUPLICATE_MOUNT_POINT' as const },
      ].flatMap(({ name, at, code }) =>
        [true, false].map(
          (copyUp): Case => ({
            name: `a path that is ${name} (copyUp: ${copyUp})`,
            call: (w) => withRootfs(w, { volumes: ['/data', '/var/lib/postgres', at], volumesFrom: [w.db.id], copyUp }),
            code,
            names: (w) => [at, w.rootfs.spare],
          }),
        ),
      ),
      world,
    );
  });
});

// ---------------------------------------------------------------------------------------
// createVolumes(containerId, paths, options)
// ---------------------------------------------------------------------------------------

describe('createVolumes(containerId, paths, options)', () => {
  const world = useWorld();
  type CreateVolumes = (w: World, id: string, paths: unknown, options?: unknown) => Promise<unknown>;
  const METHODS: { name: string; call: CreateVolumes }[] = [
    { name: 'runtime.createVolumes', call: (w, id, paths, options) => w.runtime.createVolumes(id, paths as never, options as never) },
    { name: 'volumes.createVolumes', call: (w, id, paths, options) => w.volumes.createVolumes(id, paths as never, options as never) },
  ];
  const CASES: {
    name: string;
    call: (w: World, createVolumes: CreateVolumes) => Promise<unknown>;
    code: ErrorCode;
    names: (w: World) => string[];
  }[] = [
    // paths not an array
    ...(
      [
        ['a string', '/new'],
        ['undefined', undefined],
        ['null', null],
        ['an object', { 0: '/new', length: 1 }],
        ['a number', 1],
      ] as const
    ).map(([name, paths]) => ({
      name: `paths ${name}`,
      call: (w: World, cv: CreateVolumes) => cv(w, w.empty.id, paths),
      code: 'ERR_INVALID_ARGUMENT' as const,
      names: () => ['array'],
    })),
    // options
    ...(
      [
        ['options a boolean', false, ['options']],
        ['options a string', 'copyUp', ['options', '"copyUp"']],
        ['options null', null, ['options', 'null']],
        ['options an array', [], ['options', 'array']],
        ['options.copyUp a string', { copyUp: 'no' }, ['copyUp', '"no"']],
        ['options.copyUp 1', { copyUp: 1 }, ['copyUp', 'number']],
        ['options.copyUp null', { copyUp: null }, ['copyUp', 'null']],
        ["unknown option 'copyup'", { copyup: false }, ['copyup']],
        ["unknown option 'mode'", { mode: 'ro' }, ['mode']],
      ] as const
    ).map(([name, options, names]) => ({
      name,
      call: (w: World, cv: CreateVolumes) => cv(w, w.empty.id, ['/new'], options),
      code: 'ERR_INVALID_ARGUMENT' as const,
      names: () => [...names],
    })),
    // conflicts with the store
    {
      name: 'a path the container already has',
      call: (w, cv) => cv(w, w.db.id, ['/var/log']),
      code: 'ERR_DUPLICATE_MOUNT_POINT',
      names: (w) => [w.db.id, '/var/log'],
    },
    {
      name: 'a new path and one it already has, spelled unclean',
      call: (w, cv) => cv(w, w.db.id, ['/new', '/var//lib/postgres/']),
      code: 'ERR_DUPLICATE_MOUNT_POINT',
      names: (w) => [w.db.id, '/var/lib/postgres'],
    },
    {
      name: 'a path the container has from a share',
      call: (w, cv) => cv(w, w.app.id, ['/var/lib/postgres']),
      code: 'ERR_DUPLICATE_MOUNT_POINT',
      names: (w) => [w.app.id, '/var/lib/postgres'],
    },
    {
      name: 'a mounted container',
      call: (w, cv) => cv(w, w.web.id, ['/new']),
      code: 'ERR_CONTAINER_MOUNTED',
      names: (w) => [w.web.id],
    },
    {
      name: 'a mounted container, at a path it already has',
      call: (w, cv) => cv(w, w.web.id, ['/srv/www']),
      code: 'ERR_CONTAINER_MOUNTED',
      names: (w) => [w.web.id],
    },
    // paths the rootfs cannot take
    ...(
      [
        ['a regular file in the rootfs', ['/etc/hostname'], undefined, '/etc/hostname', 'ERR_MOUNT_POINT_NOT_DIRECTORY'],
        ['a regular file, copyUp: false', ['/etc/hostname'], { copyUp: false }, '/etc/hostname', 'ERR_MOUNT_POINT_NOT_DIRECTORY'],
        ['below a regular file', ['/etc/hostname/x'], undefined, '/etc/hostname/x', 'ERR_MOUNT_POINT_NOT_DIRECTORY'],
        ['good paths, then a regular file', ['/a', '/b', '/etc/hostname'], undefined, '/etc/hostname', 'ERR_MOUNT_POINT_NOT_DIRECTORY'],
        ['a symlink to the rootfs itself', ['/new', '/up'], undefined, '/up', 'ERR_INVALID_VOLUME_PATH'],
        ['two paths that are one directory through a symlink', ['/new', '/up/new'], undefined, '/up/new', 'ERR_DUPLICATE_MOUNT_POINT'],
      ] as const
    ).map(([name, paths, options, at, code]) => ({
      name,
      call: (w: World, cv: CreateVolumes) => cv(w, w.db.id, [...paths], options),
      code,
      names: (w: World) => [at, w.rootfs.db],
    })),
  ];
  for (const method of METHODS) {
    describe(method.name, () => {
      runCases(
        CASES.map((c): Case => ({ name: c.name, call: (w) => c.call(w, method.call), code: c.code, names: c.names })),
        world,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------
// shareVolumesFrom(containerId, sourceId, options)
// ---------------------------------------------------------------------------------------

describe('shareVolumesFrom(containerId, sourceId, options)', () => {
  const world = useWorld();
  type Share = (w: World, id: string, source: string, options?: unknown) => Promise<unknown>;
  const METHODS: { name: string; call: Share }[] = [
    { name: 'runtime.shareVolumesFrom', call: (w, id, source, options) => w.runtime.shareVolumesFrom(id, source, options as never) },
    { name: 'volumes.shareVolumesFrom', call: (w, id, source, options) => w.volumes.shareVolumesFrom(id, source, options as never) },
  ];
  const CASES: { name: string; call: (w: World, share: Share) => Promise<unknown>; code: ErrorCode; names: (w: World) => string[] }[] = [
    { name: 'from itself', call: (w, s) => s(w, w.db.id, w.db.id), code: 'ERR_SHARE_FROM_SELF', names: (w) => [w.db.id] },
    { name: 'from itself, with no volumes', call: (w, s) => s(w, w.empty.id, w.empty.id), code: 'ERR_SHARE_FROM_SELF', names: (w) => [w.empty.id] },
    {
      name: 'from itself, mounted',
      call: (w, s) => s(w, w.web.id, w.web.id, { mode: 'ro' }),
      code: 'ERR_SHARE_FROM_SELF',
      names: (w) => [w.web.id],
    },
    { name: 'from an unknown container', call: (w, s) => s(w, w.empty.id, UNKNOWN), code: 'ERR_CONTAINER_NOT_FOUND', names: () => [UNKNOWN] },
    { name: 'into an unknown container', call: (w, s) => s(w, UNKNOWN, w.db.id), code: 'ERR_CONTAINER_NOT_FOUND', names: () => [UNKNOWN] },
    {
      name: 'from a volume id',
      call: (w, s) => s(w, w.empty.id, w.pgVolume),
      code: 'ERR_CONTAINER_NOT_FOUND',
      names: (w) => [w.pgVolume],
    },
    {
      name: 'paths it already has (from the same source)',
      call: (w, s) => s(w, w.app.id, w.db.id),
      code: 'ERR_DUPLICATE_MOUNT_POINT',
      names: (w) => [w.app.id],
    },
    {
      name: 'paths it already has (the source shares them back)',
      call: (w, s) => s(w, w.db.id, w.app.id),
      code: 'ERR_DUPLICATE_MOUNT_POINT',
      names: (w) => [w.db.id],
    },
    { name: 'into a mounted container', call: (w, s) => s(w, w.web.id, w.db.id), code: 'ERR_CONTAINER_MOUNTED', names: (w) => [w.web.id] },
    // modes
    ...(['x', 'RW', 'RO', '', 'ro,z', 'rw ', 'z', null, 0, true] as const).map((mode) => ({
      name: `mode ${JSON.stringify(mode)}`,
      call: (w: World, s: Share) => s(w, w.empty.id, w.db.id, { mode }),
      code: 'ERR_INVALID_MODE' as const,
      names: (w: World) => [w.db.id, ...shown(mode)],
    })),
    // options
    ...(
      [
        ["a string ('ro')", 'ro', ['options', '"ro"']],
        ['null', null, ['options', 'null']],
        ['an array', ['ro'], ['options', 'array']],
        ['a number', 1, ['options', 'number']],
        ["unknown key 'readOnly'", { readOnly: true }, ['readOnly']],
        ["unknown key 'mode ' next to mode", { mode: 'ro', 'mode ': 'rw' }, ['mode ']],
      ] as const
    ).map(([name, options, names]) => ({
      name: `options ${name}`,
      call: (w: World, s: Share) => s(w, w.empty.id, w.db.id, options),
      code: 'ERR_INVALID_ARGUMENT' as const,
      names: () => [...names],
    })),
  ];
  for (const method of METHODS) {
    describe(method.name, () => {
      runCases(
        CASES.map((c): Case => ({ name: c.name, call: (w) => c.call(w, method.call), code: c.code, names: c.names })),
        world,
      );
    });
  }
});

// ---------------------------------------------------------------------------------------
// remove(containerId, options)
// ---------------------------------------------------------------------------------------

describe('runtime.remove(containerId, options)', () => {
  const world = useWorld();
  const remove = (w: World, id: string, options?: unknown) => w.runtime.remove(id, options as never);
  runCases(
    [
      ...(
        [
          ["a string ('force')", 'force', ['options', '"force"']],
          ['true', true, ['options', 'boolean']],
          ['null', null, ['options', 'null']],
          ['an array', ['force'], ['options', 'array']],
          ['force a string', { force: 'yes' }, ['force', '"yes"']],
          ['force 1', { force: 1 }, ['force', 'number']],
          ['force null', { force: null }, ['force', 'null']],
          ['volumes a string', { volumes: 'true' }, ['volumes', '"true"']],
          ['volumes an array', { volumes: ['/var/log'] }, ['volumes', 'array']],
          ["unknown key 'volume'", { volume: true }, ['volume']],
          ["unknown key 'v' (docker rm -v)", { force: true, v: true }, ['v']],
        ] as const
      ).flatMap(([name, options, names]) =>
        (['empty', 'web'] as const).map(
          (who): Case => ({
            name: `${who === 'web' ? 'mounted container, ' : ''}options ${name}`,
            call: (w) => remove(w, w[who].id, options),
            code: 'ERR_INVALID_ARGUMENT',
            names: () => [...names],
          }),
        ),
      ),
      { name: 'a mounted container', call: (w) => remove(w, w.web.id), code: 'ERR_CONTAINER_MOUNTED', names: (w) => [w.web.id] },
      {
        name: 'a mounted container, { force: false }',
        call: (w) => remove(w, w.web.id, { force: false }),
        code: 'ERR_CONTAINER_MOUNTED',
        names: (w) => [w.web.id],
      },
      {
        name: 'a mounted container, { volumes: true }',
        call: (w) => remove(w, w.web.id, { volumes: true }),
        code: 'ERR_CONTAINER_MOUNTED',
        names: (w) => [w.web.id],
      },
    ],
    world,
  );
});

// ---------------------------------------------------------------------------------------
// volumes.remove(volumeId)
// ---------------------------------------------------------------------------------------

describe('volumes.remove(volumeId) of a volume in use (ERR_VOLUME_IN_USE, listing its users)', () => {
  const world = useWorld();
  runCases(
    [
      {
        name: "db's /var/lib/postgres, shared read-only with app",
        call: (w: World) => w.volumes.remove(w.pgVolume),
        code: 'ERR_VOLUME_IN_USE' as const,
        names: (w: World) => [w.pgVolume, w.db.id, w.app.id, '/var/lib/postgres'],
      },
      {
        name: "db's /var/log, shared with app",
        call: (w: World) => w.volumes.remove(w.logVolume),
        code: 'ERR_VOLUME_IN_USE' as const,
        names: (w: World) => [w.logVolume, w.db.id, w.app.id, '/var/log'],
      },
      {
        name: "app's own /cache (a stopped container)",
        call: (w: World) => w.volumes.remove(w.cacheVolume),
        code: 'ERR_VOLUME_IN_USE' as const,
        names: (w: World) => [w.cacheVolume, w.app.id, '/cache'],
      },
      {
        name: "web's /srv/www (a mounted container)",
        call: (w: World) => w.volumes.remove(w.webVolume),
        code: 'ERR_VOLUME_IN_USE' as const,
        names: (w: World) => [w.webVolume, w.web.id, '/srv/www'],
      },
    ],
    world,
  );
});

// ---------------------------------------------------------------------------------------
// FakeMounter.mount / unmount / list
// ---------------------------------------------------------------------------------------

describe('FakeMounter: mount(request), unmount(target), list(dir)', () => {
  const world = useWorld();
  /** A request that would be valid: db's postgres volume at its path in db's rootfs. */
  const good = (w: World) => ({
    source: path.join(w.root, 'volumes', w.pgVolume),
    rootfs: w.rootfs.db,
    path: '/var/lib/postgres',
    mode: 'rw',
  });
  const NOT_AN_OBJECT: [string, unknown][] = [
    ['undefined', undefined],
    ['null', null],
    ['a string', '/var/lib/postgres'],
    ['a number', 42],
  ];
  const BAD_ROOTFS: [string, unknown][] = [
    ['relative', 'rootfs/db'],
    ["''", ''],
    ['a number', 42],
    ['null', null],
    ['missing', undefined],
    ['with a NUL byte', '/srv/rootfs\0/db'],
  ];
  const BAD_PATHS: [string, unknown][] = [
    ['relative', 'var/lib/postgres'],
    ["''", ''],
    ["'/'", '/'],
    ["'//'", '//'],
    ["'/a/../b'", '/a/../b'],
    ["'/..'", '/..'],
    ["'/../../etc'", '/../../etc'],
    ['with a NUL byte', '/var/lib\0/postgres'],
    ['unclean: trailing slash', '/var/lib/postgres/'],
    ['unclean: double slash', '/var//lib/postgres'],
    ["unclean: '/./'", '/var/./lib/postgres'],
    ['PATH_MAX long', `/${'a/'.repeat(2047)}a`],
    ['a 256-byte component', `/${'x'.repeat(256)}`],
    ['a number', 42],
    ['missing', undefined],
  ];
  const BAD_SOURCES: [string, unknown][] = [
    ['relative', 'state/volumes/x'],
    ["''", ''],
    ['missing', undefined],
    ['a number', 42],
    ['with a NUL byte', '/state\0/volumes'],
  ];
  const BAD_MODES: [string, unknown][] = [
    ["'x'", 'x'],
    ["'RO'", 'RO'],
    ["''", ''],
    ["'ro,z'", 'ro,z'],
    ['null', null],
    ['a boolean', true],
  ];
  const mountWith = (change: Record<string, unknown>) => (w: World) => w.fake.mount({ ...good(w), ...change } as never);
  const unmountWith = (change: Record<string, unknown>) => (w: World) => {
    const { rootfs, path: at } = good(w);
    return w.fake.unmount({ rootfs, path: at, ...change } as never);
  };

  runCases(
    [
      ...NOT_AN_OBJECT.map(
        ([name, request]): Case => ({
          name: `mount(${name})`,
          call: (w) => w.fake.mount(request as never),
          code: 'ERR_INVALID_ARGUMENT',
          names: () => ['mount target'],
        }),
      ),
      ...BAD_ROOTFS.map(
        ([name, rootfs]): Case => ({
          name: `mount with rootfs ${name}`,
          call: mountWith({ rootfs }),
          code: 'ERR_INVALID_ROOTFS',
          names: () => ['rootfs', ...shown(rootfs)],
        }),
      ),
      ...BAD_PATHS.map(
        ([name, at]): Case => ({
          name: `mount with path ${name}`,
          call: mountWith({ path: at }),
          code: 'ERR_INVALID_VOLUME_PATH',
          names: () => shown(at),
        }),
      ),
      ...BAD_SOURCES.map(
        ([name, source]): Case => ({
          name: `mount with source ${name}`,
          call: mountWith({ source }),
          code: 'ERR_INVALID_ARGUMENT',
          names: () => ['source'],
        }),
      ),
      ...BAD_MODES.map(
        ([name, mode]): Case => ({
          name: `mount with mode ${name}`,
          call: mountWith({ mode }),
          code: 'ERR_INVALID_MODE',
          names: () => ['/var/lib/postgres', ...shown(mode)],
        }),
      ),
      {
        name: 'mount with the mode missing',
        call: mountWith({ mode: undefined }),
        code: 'ERR_INVALID_MODE',
        names: () => ['/var/lib/postgres'],
      },
      ...NOT_AN_OBJECT.map(
        ([name, target]): Case => ({
          name: `unmount(${name})`,
          call: (w) => w.fake.unmount(target as never),
          code: 'ERR_INVALID_ARGUMENT',
          names: () => ['mount target'],
        }),
      ),
      ...BAD_ROOTFS.map(
        ([name, rootfs]): Case => ({
          name: `unmount with rootfs ${name}`,
          call: unmountWith({ rootfs }),
          code: 'ERR_INVALID_ROOTFS',
          names: () => ['rootfs', ...shown(rootfs)],
        }),
      ),
      ...BAD_PATHS.map(
        ([name, at]): Case => ({
          name: `unmount with path ${name}`,
          call: unmountWith({ path: at }),
          code: 'ERR_INVALID_VOLUME_PATH',
          names: () => shown(at),
        }),
      ),
      // an unmount of web's mounted volume through an unclean spelling must not unmount it
      {
        name: "unmount of web's mounted /srv/www spelled '/srv/www/'",
        call: (w) => w.fake.unmount({ rootfs: w.rootfs.web, path: '/srv/www/' }),
        code: 'ERR_INVALID_VOLUME_PATH',
        names: () => ['"/srv/www/"'],
      },
      ...(
        [
          ['relative', 'rootfs/web'],
          ["''", ''],
          ['a number', 42],
          ['undefined', undefined],
          ['null', null],
          ['with a NUL byte', '/srv\0'],
        ] as const
      ).map(
        ([name, dir]): Case => ({
          name: `list with dir ${name}`,
          call: (w) => w.fake.list(dir as never),
          code: 'ERR_INVALID_ARGUMENT',
          names: () => ['directory', ...shown(dir)],
        }),
      ),
    ],
    world,
  );
});

// ---------------------------------------------------------------------------------------
// Tampered configuration files on disk
// ---------------------------------------------------------------------------------------

/** A configuration as parsed JSON, to be damaged freely. */
type Json = Record<string, any>;

interface Tamper {
  name: string;
  /** Damages db's configuration file; `cfg` is a fresh copy of what it held. */
  apply: (w: World, file: string, cfg: Json) => Promise<void>;
}

const raw = (text: string | ((w: World, original: string) => string)) => async (w: World, file: string) => {
  const original = await fs.readFile(file, 'utf8');
  await fs.writeFile(file, typeof text === 'string' ? text : text(w, original));
};
const edit = (change: (cfg: Json, w: World) => void) => async (w: World, file: string, cfg: Json) => {
  change(cfg, w);
  await fs.writeFile(file, JSON.stringify(cfg, null, 2));
};

const TAMPERS: Tamper[] = [
  { name: 'not JSON', apply: raw('this is not JSON {') },
  { name: 'empty', apply: raw('') },
  { name: 'truncated', apply: raw((_w, original) => original.slice(0, Math.floor(original.length / 2))) },
  { name: 'JSON null', apply: raw('null') },
  { name: 'a JSON array', apply: raw('[]') },
  { name: 'a JSON string', apply: raw('"hello"') },
  { name: 'unknown version', apply: edit((cfg) => (cfg.version = 2)) },
  { name: 'version missing', apply: edit((cfg) => delete cfg.version) },
  { name: "id not matching the file name (app's id)", apply: edit((cfg, w) => (cfg.id = w.app.id)) },
  { name: 'id upper-case', apply: edit((cfg) => (cfg.id = String(cfg.id).toUpperCase())) },
  { name: 'id missing', apply: edit((cfg) => delete cfg.id) },
  { name: 'rootfs missing', apply: edit((cfg) => delete cfg.rootfs) },
  { name: 'rootfs relative', apply: edit((cfg) => (cfg.rootfs = 'rootfs/db')) },
  { name: 'rootfs with a NUL byte', apply: edit((cfg) => (cfg.rootfs = `${cfg.rootfs}\0`)) },
  { name: 'rootfs a number', apply: edit((cfg) => (cfg.rootfs = 1)) },
  {
    name: "rootfs '/' (the host)",
    apply: edit((cfg) => (cfg.rootfs = '/')),
  },
  {
    name: "rootfs inside the store (volumes/)",
    apply: edit((cfg, w) => (cfg.rootfs = path.join(w.root, 'volumes'))),
  },
  { name: 'createdAt not a date', apply: edit((cfg) => (cfg.createdAt = 'yesterday')) },
  { name: 'createdAt missing', apply: edit((cfg) => delete cfg.createdAt) },
  { name: "mounted 'yes'", apply: edit((cfg) => (cfg.mounted = 'yes')) },
  { name: 'mounted missing', apply: edit((cfg) => delete cfg.mounted) },
  { name: 'volumes missing', apply: edit((cfg) => delete cfg.volumes) },
  { name: 'volumes an object', apply: edit((cfg) => (cfg.volumes = { ...cfg.volumes })) },
  { name: 'a volume that is a number', apply: edit((cfg) => cfg.volumes.push(42)) },
  { name: "volumeId '../../etc'", apply: edit((cfg) => (cfg.volumes[0].volumeId = '../../etc')) },
  { name: "volumeId '..'", apply: edit((cfg) => (cfg.volumes[0].volumeId = '..')) },
  { name: 'volumeId upper-case', apply: edit((cfg) => (cfg.volumes[1].volumeId = String(cfg.volumes[1].volumeId).toUpperCase())) },
  { name: 'volumeId missing', apply: edit((cfg) => delete cfg.volumes[0].volumeId) },
  { name: "path with '..' ('/var/../../etc')", apply: edit((cfg) => (cfg.volumes[0].path = '/var/../../etc')) },
  { name: "path '/'", apply: edit((cfg) => (cfg.volumes[0].path = '/')) },
  { name: 'path relative', apply: edit((cfg) => (cfg.volumes[0].path = 'var/log')) },
  { name: 'path unclean', apply: edit((cfg) => (cfg.volumes[0].path = '/var/log/')) },
  { name: 'path with a NUL byte', apply: edit((cfg) => (cfg.volumes[0].path = '/var/log\0')) },
  { name: 'path missing', apply: edit((cfg) => delete cfg.volumes[0].path) },
  { name: "mode 'x'", apply: edit((cfg) => (cfg.volumes[0].mode = 'x')) },
  { name: "mode 'RW'", apply: edit((cfg) => (cfg.volumes[0].mode = 'RW')) },
  { name: 'mode missing', apply: edit((cfg) => delete cfg.volumes[0].mode) },
  { name: "origin 'shared'", apply: edit((cfg) => (cfg.volumes[0].origin = 'shared')) },
  { name: "origin from '../x'", apply: edit((cfg) => (cfg.volumes[0].origin = { from: '../x' })) },
  { name: 'origin missing', apply: edit((cfg) => delete cfg.volumes[0].origin) },
  { name: 'two volumes at one path', apply: edit((cfg) => (cfg.volumes[1].path = cfg.volumes[0].path)) },
  { name: 'mountedIn names no namespace (a path)', apply: edit((cfg) => (cfg.mountedIn = { namespace: '../../etc', pid: 1, startTime: 1 })) },
  { name: 'mountedIn with a pid that is not a number', apply: edit((cfg) => (cfg.mountedIn = { namespace: 'mnt:[4026531832]', pid: '1', startTime: 1 })) },
  { name: 'mountedIn an array', apply: edit((cfg) => (cfg.mountedIn = [])) },
  {
    name: "handler namespace with pid 0 (a kill would reach this process's group)",
    apply: edit((cfg) => (cfg.handler = { pid: 1, bootId: '00000000-0000-4000-8000-000000000000', namespace: { pid: 0, startTime: 1 } })),
  },
  {
    name: 'handler namespace without a start time',
    apply: edit((cfg) => (cfg.handler = { pid: 1, bootId: '00000000-0000-4000-8000-000000000000', namespace: { pid: 42 } })),
  },
  {
    name: "a symlink to app's configuration",
    apply: async (w, file) => {
      await fs.rm(file);
      await fs.symlink(w.configFile(w.app.id), file);
    },
  },
  {
    name: 'replaced by a directory',
    apply: async (_w, file) => {
      await fs.rm(file);
      await fs.mkdir(file);
    },
  },
];

/** Everything that reads db's configuration, or all configurations (recover() moves a corrupt one aside: store-damage.test.ts). */
const READERS: { name: string; call: (w: World) => Promise<unknown> }[] = [
  { name: 'runtime.get(db)', call: (w) => w.runtime.get(w.db.id) },
  { name: 'runtime.ociMounts(db)', call: (w) => w.runtime.ociMounts(w.db.id) },
  { name: 'runtime.runHandler(db)', call: (w) => w.runtime.runHandler(w.db.id, () => 'ran') },
  { name: 'runtime.list()', call: (w) => w.runtime.list() },
  { name: 'runtime.mount(db)', call: (w) => w.runtime.mount(w.db.id) },
  { name: 'runtime.unmount(db)', call: (w) => w.runtime.unmount(w.db.id) },
  { name: 'runtime.remove(db)', call: (w) => w.runtime.remove(w.db.id) },
  { name: 'runtime.remove(db, { force, volumes })', call: (w) => w.runtime.remove(w.db.id, { force: true, volumes: true }) },
  { name: "runtime.remove(app, { volumes }) (must know who else uses app's volumes)", call: (w) => w.runtime.remove(w.app.id, { volumes: true }) },
  { name: 'runtime.createVolumes(db)', call: (w) => w.runtime.createVolumes(w.db.id, ['/new']) },
  { name: 'runtime.shareVolumesFrom(empty, db)', call: (w) => w.runtime.shareVolumesFrom(w.empty.id, w.db.id) },
  { name: 'runtime.shareVolumesFrom(db, empty)', call: (w) => w.runtime.shareVolumesFrom(w.db.id, w.empty.id) },
  { name: 'runtime.create({ volumesFrom: [db] })', call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumesFrom: [w.db.id] }) },
  { name: 'volumes.list()', call: (w) => w.volumes.list() },
  { name: "volumes.inspect(db's volume)", call: (w) => w.volumes.inspect(w.pgVolume) },
  // The reference index names db as a user of its volume; the configuration must confirm it.
  { name: "volumes.remove(db's volume)", call: (w) => w.volumes.remove(w.pgVolume) },
];

describe('a tampered configuration file is ERR_CORRUPT_CONFIG for everything that reads it, and nothing changes', () => {
  for (const tamper of TAMPERS) {
    describe(`db's configuration: ${tamper.name}`, () => {
      let pristine: Observed | undefined;
      let original = '';
      const world = useWorld(async (w) => {
        const file = w.configFile(w.db.id);
        pristine = await observe(w);
        original = await fs.readFile(file, 'utf8');
        await tamper.apply(w, file, JSON.parse(original) as Json);
      });
      runCases(
        READERS.map(
          (reader): Case => ({
            name: reader.name,
            call: reader.call,
            code: 'ERR_CORRUPT_CONFIG',
            names: (w) => [w.db.id, w.configFile(w.db.id)],
          }),
        ),
        world,
      );
      test('restoring the file brings db back, and nothing else had changed', async () => {
        const w = world();
        world.dirty();
        const file = w.configFile(w.db.id);
        await fs.rm(file, { recursive: true });
        await fs.writeFile(file, original, { mode: 0o600 });
        expect(await w.runtime.get(w.db.id)).toEqual(w.db);
        expect(await observe(w)).toEqual(pristine);
      });
    });
  }
});

describe('a volume directory missing from the store', () => {
  const world = useWorld(async (w) => {
    await fs.rename(path.join(w.root, 'volumes', w.pgVolume), path.join(w.dir, 'moved-away'));
  });
  runCases(
    [
      {
        name: 'runtime.mount(db) mounts none of its volumes',
        call: (w) => w.runtime.mount(w.db.id),
        code: 'ERR_VOLUME_NOT_FOUND',
        names: (w) => [w.pgVolume, w.db.id, '/var/lib/postgres'],
      },
      {
        name: 'runtime.mount(app), which shares it',
        call: (w) => w.runtime.mount(w.app.id),
        code: 'ERR_VOLUME_NOT_FOUND',
        names: (w) => [w.pgVolume, w.app.id, '/var/lib/postgres'],
      },
      {
        name: 'volumes.inspect',
        call: (w) => w.volumes.inspect(w.pgVolume),
        code: 'ERR_VOLUME_NOT_FOUND',
        names: (w) => [w.pgVolume],
      },
      {
        name: 'volumes.remove',
        call: (w) => w.volumes.remove(w.pgVolume),
        code: 'ERR_VOLUME_NOT_FOUND',
        names: (w) => [w.pgVolume],
      },
    ],
    world,
  );

  test("runtime.remove(app, { volumes: true }) when app's own /cache volume is already missing still removes app", async () => {
    const w = world();
    world.dirty();
    await fs.rename(path.join(w.root, 'volumes', w.cacheVolume), path.join(w.dir, 'cache-moved-away'));
    await w.runtime.remove(w.app.id, { volumes: true });
    await expectCode(w.runtime.get(w.app.id), 'ERR_CONTAINER_NOT_FOUND');
    expect(await fs.readdir(path.join(w.root, 'volumes'))).not.toContain(w.cacheVolume);
    expect(await fs.readdir(path.join(w.root, 'trash'))).toEqual([]);
  });
});

/**
 * Hostile input to the public API with the real BindMounter, as root in a private mount
 * namespace (test/run.mjs). Every case checks that the call is refused with its stable
 * code, that the message names the offending input, and that nothing changed: neither
 * the files (state root, every rootfs, the "host" directories beside them) nor
 * /proc/self/mountinfo, so a refused call can never have mounted, unmounted, created or
 * deleted anything, here or on the host.
 *
 * Cases without a `setup` share one world, rebuilt only after a case that did not end
 * by finding it unchanged; a case with a `setup` (a tampered file, a swapped symlink)
 * gets a world of its own.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, ContainerVolumesError, type ContainerInfo, type ErrorCode } from '../../src/index.js';
import { cleanupTemp, snapshotTree, tempDir } from '../helpers/fixtures.js';
import { unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('hostile-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

// ---------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------

interface World {
  /** Holds everything below; snapshotted whole. */
  dir: string;
  root: string;
  runtime: ContainerRuntime;
  rootfs: { db: string; app: string; web: string; empty: string; spare: string; evil: string };
  /** volumes /var/lib/postgres (copied up) and /var/log. */
  db: ContainerInfo;
  /** `--volumes-from db:ro` plus its own /cache. */
  app: ContainerInfo;
  /** volume /srv/www; really mounted. */
  web: ContainerInfo;
  /** no volumes. */
  empty: ContainerInfo;
  /** on the `evil` rootfs, no volumes: a target for createVolumes through its symlinks. */
  evil: ContainerInfo;
  pgVolume: string;
  /** A volume whose container was removed without `volumes: true`. */
  orphanVolume: string;
  /** A directory outside every rootfs and outside the store, standing for the host: symlinks point here. */
  host: string;
  notADir: string;
  linkToSlash: string;
  linkIntoStore: string;
  dangling: string;
  loop: string;
  configFile(containerId: string): string;
}

async function buildWorld(): Promise<World> {
  const dir = await fs.mkdtemp(path.join(base, 'w-'));
  const root = path.join(dir, 'state');
  const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
  const make = async (name: string) => {
    const rootfs = path.join(dir, 'rootfs', name);
    await fs.mkdir(path.join(rootfs, 'etc'), { recursive: true });
    await fs.writeFile(path.join(rootfs, 'etc/hostname'), `${name}\n`);
    return rootfs;
  };
  const rootfs = {
    db: await make('db'),
    app: await make('app'),
    web: await make('web'),
    empty: await make('empty'),
    spare: await make('spare'),
    evil: await make('evil'),
  };
  const host = path.join(dir, 'host');
  await fs.mkdir(path.join(host, 'data'), { recursive: true });
  await fs.writeFile(path.join(host, 'shadow'), 'host secret\n');
  // The evil rootfs: each way out of it a volume path could try (followed inside the
  // rootfs, they can only lead back to it), a loop, and links to the rootfs itself.
  await fs.symlink(host, path.join(rootfs.evil, 'var'));
  await fs.symlink('/', path.join(rootfs.evil, 'abs'));
  await fs.symlink('..', path.join(rootfs.evil, 'up'));
  await fs.symlink('../../host', path.join(rootfs.evil, 'rel'));
  await fs.symlink('loop', path.join(rootfs.evil, 'loop'));
  await fs.symlink('.', path.join(rootfs.evil, 'dot'));
  await fs.mkdir(path.join(rootfs.db, 'var/lib/postgres'), { recursive: true });
  await fs.writeFile(path.join(rootfs.db, 'var/lib/postgres/PG_VERSION'), '16\n');

  const db = await runtime.create({ rootfs: rootfs.db, volumes: ['/var/lib/postgres', '/var/log'] });
  const app = await runtime.create({ rootfs: rootfs.app, volumes: ['/cache'], volumesFrom: [`${db.id}:ro`] });
  const web = await runtime.mount((await runtime.create({ rootfs: rootfs.web, volumes: ['/srv/www'] })).id);
  const empty = await runtime.create({ rootfs: rootfs.empty });
  const evil = await runtime.create({ rootfs: rootfs.evil });
  const scratch = await runtime.create({ rootfs: rootfs.spare, volumes: ['/scratch'] });
  await runtime.remove(scratch.id);

  const notADir = path.join(dir, 'not-a-directory');
  await fs.writeFile(notADir, 'plain file\n');
  const linkToSlash = path.join(dir, 'link-to-slash');
  await fs.symlink('/', linkToSlash);
  const linkIntoStore = path.join(dir, 'link-into-store');
  await fs.symlink(path.join(root, 'volumes'), linkIntoStore);
  const dangling = path.join(dir, 'dangling');
  await fs.symlink(path.join(dir, 'nowhere'), dangling);
  const loop = path.join(dir, 'loop');
  await fs.symlink(loop, loop);

  return {
    dir,
    root,
    runtime,
    rootfs,
    db,
    app,
    web,
    empty,
    evil,
    pgVolume: (db.volumes.find((v) => v.path === '/var/lib/postgres') as { volumeId: string }).volumeId,
    orphanVolume: (scratch.volumes[0] as { volumeId: string }).volumeId,
    host,
    notADir,
    linkToSlash,
    linkIntoStore,
    dangling,
    loop,
    configFile: (id) => path.join(root, 'containers', `${id}.json`),
  };
}

/** Everything a refused call could have changed: every file under the world, and every mount in the namespace. */
async function observe(w: World): Promise<{ tree: Record<string, string>; mountinfo: string[] }> {
  // Mount ids and the whole table: a mount made and undone elsewhere shows as well as one under the world.
  const mountinfo = (await fs.readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter(Boolean);
  return { tree: await snapshotTree(w.dir), mountinfo };
}

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

interface Case {
  name: string;
  /** Damage done to a fresh world before the call: such a case does not share its world. */
  setup?: (w: World) => Promise<void>;
  call: (w: World) => Promise<unknown>;
  code: ErrorCode;
  /** What the message must contain: the offending value, path, container or file. */
  names: (w: World) => string[];
}

const quoted = (value: string) => JSON.stringify(value);
const UNKNOWN = '0f0e0d0c-0b0a-4908-8706-050403020100';

/**
 * Volume paths. The first group adapts the invalid `-v` specs of moby's
 * volume/mounts/linux_parser_test.go: our API takes the container path alone, so each
 * becomes the destination it names (a spec whose only fault is its host part or its
 * mode has no counterpart here; modes are tested through volumesFrom below).
 */
const BAD_PATHS: { name: string; value: unknown; names: string[] }[] = [
  ...['', './', '../', 'path', ':', 'tmp:', ':test', ':/test', '::', ':::', 'path:ro', 'relative:/absolute-path', 'hostPath:/containerPath:ro'].map(
    (value) => ({ name: `moby: ${quoted(value)}`, value, names: [quoted(value)] }),
  ),
  { name: "'/' (the whole rootfs)", value: '/', names: ['"/"'] },
  { name: "'//' (cleans to /)", value: '//', names: ['"//"'] },
  { name: "'/./' (cleans to /)", value: '/./', names: ['"/./"'] },
  { name: "a '..' segment in the middle", value: '/var/../../etc', names: ['"/var/../../etc"', '..'] },
  { name: "a trailing '..'", value: '/var/log/..', names: ['"/var/log/.."'] },
  { name: "'/..'", value: '/..', names: ['"/.."'] },
  { name: 'a NUL byte', value: '/var/log\0/../../etc', names: [quoted('/var/log\0/../../etc'), 'NUL'] },
  { name: 'only a NUL byte', value: '\0', names: [quoted('\0')] },
  { name: 'a component of 256 bytes (NAME_MAX is 255)', value: `/${'n'.repeat(256)}`, names: ['NAME_MAX'] },
  { name: 'a component of 128 two-byte characters (256 bytes)', value: `/${'é'.repeat(128)}`, names: ['NAME_MAX'] },
  { name: 'PATH_MAX bytes long', value: `/${'p/'.repeat(2047)}p`, names: ['PATH_MAX'] },
  { name: 'over PATH_MAX with short components', value: `/${`${'q'.repeat(255)}/`.repeat(16)}q`, names: ['PATH_MAX'] },
  { name: 'a number', value: 42, names: ['42', 'string'] },
  { name: 'null', value: null, names: ['null', 'string'] },
  { name: 'undefined', value: undefined, names: ['undefined', 'string'] },
  { name: 'an object', value: { path: '/data' }, names: ['string'] },
  { name: 'an array', value: ['/data'], names: ['string'] },
];

/** `--volumes-from` modes that are not `ro`/`rw`; several are moby's invalid modes and propagation flags. */
const BAD_MODES = ['x', '', 'RO', 'Rw', 'ro,rw', 'z', 'ro,z', 'sw', 'rwz', 'ro,rshared,rslave', 'shared', 'rprivate', ':', 'ro:', ' ro', 'ro\0'];

const ID_METHODS: { name: string; call: (w: World, id: string) => Promise<unknown>; what: 'container' | 'volume' }[] = [
  { name: 'get', what: 'container', call: (w, id) => w.runtime.get(id) },
  { name: 'mount', what: 'container', call: (w, id) => w.runtime.mount(id) },
  { name: 'unmount', what: 'container', call: (w, id) => w.runtime.unmount(id) },
  { name: 'remove({ force, volumes })', what: 'container', call: (w, id) => w.runtime.remove(id, { force: true, volumes: true }) },
  { name: 'createVolumes', what: 'container', call: (w, id) => w.runtime.createVolumes(id, ['/new']) },
  { name: 'volumes.inspect', what: 'volume', call: (w, id) => w.runtime.volumes.inspect(id) },
  { name: 'volumes.remove', what: 'volume', call: (w, id) => w.runtime.volumes.remove(id) },
];
/** Each is a variant of a real id, so a lax check would reach a real container or volume (or the host). */
const BAD_IDS: { name: string; value: (real: string) => unknown }[] = [
  { name: "'<id>/..'", value: (id) => `${id}/..` },
  { name: "'../<id>'", value: (id) => `../${id}` },
  { name: "'../../../etc'", value: () => '../../../etc' },
  { name: "'..'", value: () => '..' },
  { name: 'upper-case', value: (id) => id.toUpperCase() },
  { name: "''", value: () => '' },
  { name: 'a number', value: () => 42 },
  { name: 'undefined', value: () => undefined },
  { name: 'an array [id]', value: (id) => [id] },
  { name: 'an object { id }', value: (id) => ({ id }) },
];

/** How a bad value shows in a message: a string quoted, anything else by its type. */
const shownAs = (value: unknown) => (typeof value === 'string' ? quoted(value) : value === undefined ? 'undefined' : Array.isArray(value) ? 'array' : typeof value);

/** Written as the library writes configurations, so that only the tampered field differs from what it would write. */
const asConfig = (cfg: object) => `${JSON.stringify(cfg, null, 2)}\n`;

/** How a configuration on disk can be tampered with; each is read by every method in READERS. */
const TAMPERS: { name: string; apply: (w: World, cfg: Record<string, any>) => string }[] = [
  { name: 'not JSON', apply: () => '{"version": 1, "id": ' },
  { name: "its id '../<id>'", apply: (_w, cfg) => asConfig({ ...cfg, id: `../${cfg.id}` }) },
  {
    name: 'a volumeId climbing out of the store to the host directory',
    apply: (_w, cfg) => asConfig({ ...cfg, volumes: [{ ...cfg.volumes[0], volumeId: '../../host' }, ...cfg.volumes.slice(1)] }),
  },
  { name: "rootfs '/'", apply: (_w, cfg) => asConfig({ ...cfg, rootfs: '/' }) },
  { name: 'rootfs inside the store', apply: (w, cfg) => asConfig({ ...cfg, rootfs: path.join(w.root, 'volumes') }) },
  { name: 'rootfs missing', apply: (_w, { rootfs: _, ...cfg }) => asConfig(cfg) },
  { name: 'volumes missing', apply: (_w, { volumes: _, ...cfg }) => asConfig(cfg) },
  { name: 'a volume path with ..', apply: (_w, cfg) => asConfig({ ...cfg, volumes: [{ ...cfg.volumes[0], path: '/../../host' }, ...cfg.volumes.slice(1)] }) },
];
const READERS: { name: string; call: (w: World) => Promise<unknown> }[] = [
  { name: 'get(db)', call: (w) => w.runtime.get(w.db.id) },
  { name: 'mount(db)', call: (w) => w.runtime.mount(w.db.id) },
  { name: 'unmount(db)', call: (w) => w.runtime.unmount(w.db.id) },
  { name: 'remove(db, { force, volumes })', call: (w) => w.runtime.remove(w.db.id, { force: true, volumes: true }) },
  { name: "volumes.inspect(db's volume)", call: (w) => w.runtime.volumes.inspect(w.pgVolume) },
  // The reference index names db as a user of its own volume: removing it must read db's configuration.
  { name: "volumes.remove(db's volume)", call: (w) => w.runtime.volumes.remove(w.pgVolume) },
  // recover() moves a corrupt configuration aside instead (test/real/recover.test.ts).
];

/** Replaces a directory of a rootfs by a symlink, after the container was created. */
const swapForSymlink = (rootfs: (w: World) => string, at: string, to: (w: World) => string) => async (w: World) => {
  const victim = path.join(rootfs(w), at);
  await fs.rm(victim, { recursive: true, force: true });
  await fs.symlink(to(w), victim);
};

const CASES: Case[] = [
  // --- volume paths, through create and createVolumes --------------------------------
  ...BAD_PATHS.map(
    (p): Case => ({
      name: `create: volume path ${p.name}`,
      call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumes: [p.value as string] }),
      code: 'ERR_INVALID_VOLUME_PATH',
      names: () => p.names,
    }),
  ),
  ...BAD_PATHS.filter((_, i) => i % 3 === 0).map(
    (p): Case => ({
      name: `createVolumes(empty): volume path ${p.name}, after a good one`,
      call: (w) => w.runtime.createVolumes(w.empty.id, ['/good', p.value as string]),
      code: 'ERR_INVALID_VOLUME_PATH',
      names: () => p.names,
    }),
  ),
  ...(
    [
      ['a string', '/data'],
      ['an object', { 0: '/data' }],
      ['null', null],
    ] as [string, unknown][]
  ).map(
    ([name, value]): Case => ({
      name: `create: volumes is ${name}`,
      call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumes: value as string[] }),
      code: 'ERR_INVALID_ARGUMENT',
      names: () => ['volume paths'],
    }),
  ),

  // --- volumesFrom and shareVolumesFrom modes -----------------------------------------
  ...BAD_MODES.map(
    (mode): Case => ({
      name: `create: volumesFrom '<db>:${mode}'`,
      call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumesFrom: [`${w.db.id}:${mode}`] }),
      code: 'ERR_INVALID_MODE',
      names: (w) => [quoted(mode), w.db.id],
    }),
  ),
  ...['x', 'RO', '', 'ro,rw'].map(
    (mode): Case => ({
      name: `shareVolumesFrom(empty, db, { mode: ${quoted(mode)} })`,
      call: (w) => w.runtime.shareVolumesFrom(w.empty.id, w.db.id, { mode: mode as 'ro' }),
      code: 'ERR_INVALID_MODE',
      names: (w) => [quoted(mode), w.db.id],
    }),
  ),
  ...[
    ['an empty id', () => ':ro'],
    ["'../<db>:ro'", (w: World) => `../${w.db.id}:ro`],
    ['an upper-case id', (w: World) => w.db.id.toUpperCase()],
    ["''", () => ''],
  ].map(
    ([name, entry]): Case => ({
      name: `create: volumesFrom entry with ${name as string}: it names no container`,
      call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumesFrom: [(entry as (w: World) => string)(w)] }),
      code: 'ERR_CONTAINER_NOT_FOUND',
      names: (w) => ['no such container', quoted((entry as (w: World) => string)(w).split(':')[0] as string)],
    }),
  ),
  {
    name: 'create: volumesFrom entry with the id after the mode: the mode is checked first',
    call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumesFrom: [`ro:${w.db.id}`] }),
    code: 'ERR_INVALID_MODE',
    names: (w) => [quoted(w.db.id)],
  },
  ...[
    ['a number', 42],
    ['an object', { id: 'x' }],
    ['undefined', undefined],
  ].map(
    ([name, entry]): Case => ({
      name: `create: volumesFrom entry that is ${name as string}`,
      call: (w) => w.runtime.create({ rootfs: w.rootfs.spare, volumesFrom: [entry as string] }),
      code: 'ERR_INVALID_ARGUMENT',
      names: () => ['volumesFrom'],
    }),
  ),
  {
    name: 'shareVolumesFrom(db, db): sharing from itself',
    call: (w) => w.runtime.shareVolumesFrom(w.db.id, w.db.id),
    code: 'ERR_SHARE_FROM_SELF',
    names: (w) => [w.db.id],
  },

  // --- ids -----------------------------------------------------------------------------
  ...ID_METHODS.flatMap((method) =>
    BAD_IDS.map(
      (bad): Case => ({
        name: `${method.name} with ${method.what} id ${bad.name}`,
        call: (w) => method.call(w, bad.value(method.what === 'volume' ? w.pgVolume : w.db.id) as string),
        // Never joined into a path: a string names no container (or volume), anything else is the wrong type.
        code: typeof bad.value('') !== 'string' ? 'ERR_INVALID_ARGUMENT' : method.what === 'volume' ? 'ERR_VOLUME_NOT_FOUND' : 'ERR_CONTAINER_NOT_FOUND',
        names: (w) => [`${method.what} id`, shownAs(bad.value(method.what === 'volume' ? w.pgVolume : w.db.id))],
      }),
    ),
  ),
  {
    name: 'shareVolumesFrom(empty, ../<db>)',
    call: (w) => w.runtime.shareVolumesFrom(w.empty.id, `../${w.db.id}`),
    code: 'ERR_CONTAINER_NOT_FOUND',
    names: (w) => [quoted(`../${w.db.id}`)],
  },
  {
    name: 'mount of a well-formed id nobody has',
    call: (w) => w.runtime.mount(UNKNOWN),
    code: 'ERR_CONTAINER_NOT_FOUND',
    names: () => [UNKNOWN],
  },

  // --- rootfs given to create ----------------------------------------------------------
  ...([undefined, null, '/srv/rootfs', ['/srv/rootfs']] as unknown[]).map(
    (spec): Case => ({
      name: `create(${spec === undefined ? 'undefined' : JSON.stringify(spec)}): not a spec object`,
      call: (w) => w.runtime.create(spec as never),
      code: 'ERR_INVALID_ARGUMENT',
      names: () => ['spec'],
    }),
  ),
  ...(
    [
      ["'/' (the host)", () => '/', ['"/"']],
      ["'//' (the host)", () => '//', ['"//"']],
      ['the state root', (w) => w.root, []],
      ['inside the state root (volumes/)', (w) => path.join(w.root, 'volumes'), []],
      ["one of db's volume directories", (w) => path.join(w.root, 'volumes', w.pgVolume), []],
      ['a directory that contains the state root', (w) => w.dir, []],
      ['relative', () => 'rootfs/spare', ['"rootfs/spare"']],
      ["''", () => '', ['""']],
      ['a regular file', (w) => w.notADir, []],
      ['missing', (w) => path.join(w.dir, 'no-such-rootfs'), []],
      ['with a NUL byte', (w) => `${w.rootfs.spare}\0/../..`, []],
      ['a symlink to /', (w) => w.linkToSlash, []],
      ["a path through a symlink to / whose '..' lands on /", (w) => `${w.linkToSlash}/tmp/..`, []],
      ['a symlink into the store', (w) => w.linkIntoStore, []],
      ['a path through a symlink to / that ends at the state root', (w) => path.join(w.linkToSlash, w.root), []],
      ['a dangling symlink', (w) => w.dangling, []],
      ['a symlink loop', (w) => w.loop, []],
    ] as [string, (w: World) => string, string[]][]
  ).map(
    ([name, rootfs, shown]): Case => ({
      name: `create: rootfs ${name}`,
      call: (w) => w.runtime.create({ rootfs: rootfs(w), volumes: ['/data'] }),
      code: 'ERR_INVALID_ROOTFS',
      names: (w) => ['rootfs', ...(shown.length > 0 ? shown : [quoted(rootfs(w))])],
    }),
  ),
  ...([42, null, { path: '/srv' }] as unknown[]).map(
    (rootfs): Case => ({
      name: `create: rootfs ${rootfs === null ? 'null' : typeof rootfs}`,
      call: (w) => w.runtime.create({ rootfs: rootfs as string, volumes: ['/data'] }),
      code: 'ERR_INVALID_ROOTFS',
      names: () => ['rootfs'],
    }),
  ),
  {
    name: 'create: rootfs missing from the spec',
    call: (w) => w.runtime.create({ volumes: ['/data'] } as never),
    code: 'ERR_INVALID_ROOTFS',
    names: () => ['rootfs'],
  },

  // --- symlinks on a volume path inside the rootfs --------------------------------------
  // Followed inside the rootfs (a link out lands back in it), a volume path is refused
  // only where it cannot take a volume: the rootfs itself, a loop, one directory twice.
  ...(
    [
      ['/abs', 'abs', 'ERR_INVALID_VOLUME_PATH'],
      ['/up', 'up', 'ERR_INVALID_VOLUME_PATH'],
      ['/dot', 'dot', 'ERR_INVALID_VOLUME_PATH'],
      ['/up/abs', 'abs', 'ERR_INVALID_VOLUME_PATH'],
      ['/loop/data', 'loop', 'ERR_PATH_ESCAPES_ROOTFS'],
    ] as const
  ).flatMap(([at, link, code]): Case[] => [
    {
      name: `create on the evil rootfs: ${at}, where ${link} is a symlink`,
      call: (w) => w.runtime.create({ rootfs: w.rootfs.evil, volumes: [at], copyUp: false }),
      code,
      names: (w) => [at, w.rootfs.evil],
    },
    {
      name: `createVolumes(evil, [${at}]), where ${link} is a symlink`,
      call: (w) => w.runtime.createVolumes(w.evil.id, [at]),
      code,
      names: (w) => [at, w.rootfs.evil],
    },
  ]),
  {
    name: 'create on the evil rootfs: /data and /abs/data, one directory through a symlink',
    call: (w) => w.runtime.create({ rootfs: w.rootfs.evil, volumes: ['/data', '/abs/data'] }),
    code: 'ERR_DUPLICATE_MOUNT_POINT',
    names: (w) => ['/data', '/abs/data', w.rootfs.evil],
  },
  {
    name: "mount(db) after db's /var/lib was swapped for a symlink loop",
    setup: swapForSymlink((w) => w.rootfs.db, 'var/lib', () => 'lib'),
    call: (w) => w.runtime.mount(w.db.id),
    code: 'ERR_PATH_ESCAPES_ROOTFS',
    names: (w) => ['/var/lib/postgres', w.rootfs.db],
  },
  {
    name: "mount(db) after db's /var/log was swapped for a symlink to its /var/lib/postgres",
    setup: swapForSymlink((w) => w.rootfs.db, 'var/log', () => '/var/lib/postgres'),
    call: (w) => w.runtime.mount(w.db.id),
    code: 'ERR_DUPLICATE_MOUNT_POINT',
    names: (w) => ['/var/lib/postgres', '/var/log', w.rootfs.db],
  },
  {
    name: "mount(app) after app's rootfs was swapped for a symlink to /",
    setup: async (w) => {
      await fs.rename(w.rootfs.app, `${w.rootfs.app}.moved`);
      await fs.symlink('/', w.rootfs.app);
    },
    call: (w) => w.runtime.mount(w.app.id),
    code: 'ERR_INVALID_ROOTFS',
    names: (w) => [w.rootfs.app],
  },
  {
    name: "mount(app) after app's rootfs was swapped for a symlink to the host directory",
    setup: async (w) => {
      await fs.rename(w.rootfs.app, `${w.rootfs.app}.moved`);
      await fs.symlink(w.host, w.rootfs.app);
    },
    call: (w) => w.runtime.mount(w.app.id),
    code: 'ERR_INVALID_ROOTFS',
    names: (w) => [w.rootfs.app],
  },
  {
    name: "mount(db) after db's /var/log was replaced by a regular file",
    setup: (w) => fs.writeFile(path.join(w.rootfs.db, 'var/log'), 'not a directory\n'),
    call: (w) => w.runtime.mount(w.db.id),
    code: 'ERR_MOUNT_POINT_NOT_DIRECTORY',
    names: (w) => ['/var/log', w.rootfs.db],
  },

  // --- configurations tampered on disk --------------------------------------------------
  ...TAMPERS.flatMap((tamper) =>
    READERS.map(
      (reader): Case => ({
        name: `db's configuration tampered (${tamper.name}), read by ${reader.name}`,
        setup: async (w) => {
          const file = w.configFile(w.db.id);
          await fs.writeFile(file, tamper.apply(w, JSON.parse(await fs.readFile(file, 'utf8'))));
        },
        call: reader.call,
        code: 'ERR_CORRUPT_CONFIG',
        names: (w) => [w.db.id, w.configFile(w.db.id)],
      }),
    ),
  ),
  ...(['unmount', 'mount', 'remove'] as const).map(
    (op): Case => ({
      name: `web's configuration (web is mounted) tampered (rootfs '/'), then ${op}(web)`,
      setup: async (w) => {
        const file = w.configFile(w.web.id);
        await fs.writeFile(file, asConfig({ ...JSON.parse(await fs.readFile(file, 'utf8')), rootfs: '/' }));
      },
      call: (w) => (op === 'remove' ? w.runtime.remove(w.web.id, { force: true }) : w.runtime[op](w.web.id)),
      code: 'ERR_CORRUPT_CONFIG',
      names: (w) => [w.web.id, w.configFile(w.web.id)],
    }),
  ),
  {
    // A well-formed configuration naming a symlink: only opening the rootfs without following it can catch it.
    name: "db's configuration tampered (rootfs a symlink to /), then mount(db)",
    setup: async (w) => {
      const file = w.configFile(w.db.id);
      await fs.writeFile(file, asConfig({ ...JSON.parse(await fs.readFile(file, 'utf8')), rootfs: w.linkToSlash }));
    },
    call: (w) => w.runtime.mount(w.db.id),
    code: 'ERR_INVALID_ROOTFS',
    names: (w) => [w.linkToSlash],
  },
];

describe('hostile input with the real BindMounter changes nothing on disk or in the mount table', () => {
  let shared: World | undefined;
  beforeAll(() => {
    console.log(`hostile-input: ${CASES.length} cases`);
  });

  test.each(CASES.map((c) => [`${c.name} → ${c.code}`, c] as const))('%s', async (_, c) => {
    const w = c.setup ? await buildWorld() : (shared ?? (await buildWorld()));
    // The shared world is handed back below only if this case finds it unchanged.
    if (!c.setup) shared = undefined;
    await c.setup?.(w);
    const before = await observe(w);
    let error: unknown;
    await c.call(w).catch((e: unknown) => (error = e));
    const message = error instanceof Error ? error.message : '';
    // One comparison, so that a wrong code, a message that names nothing and a changed world all show at once.
    expect({
      code: (error as { code?: unknown } | undefined)?.code,
      fromTheLibrary: error instanceof ContainerVolumesError,
      unnamed: c.names(w).filter((part) => !message.includes(part)),
      ...(await observe(w)),
    }).toEqual({ code: c.code, fromTheLibrary: true, unnamed: [], ...before });
    // Only a world found unchanged, and never one damaged on purpose, is handed to the next case.
    if (!c.setup) shared = w;
  });
});

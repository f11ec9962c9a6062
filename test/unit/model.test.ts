/**
 * Model-based test of SPEC §4 with the fake mounter: random sequences of valid and
 * invalid commands run against the library and against the reference model in
 * test/helpers/model.ts. After every command the two must agree on the result (or the
 * error code), and on the whole observable state: list(), volumes.list() with usedBy,
 * and what the fake mounter has mounted under every rootfs.
 *
 * The model names containers and volumes by creation order; the library's uuids are
 * mapped onto those names as they first appear, so a library that reused an id, lost a
 * volume or invented one shows up as a difference.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, expect, test } from '@jest/globals';
import fc from 'fast-check';
import {
  type ContainerInfo,
  type ContainerRuntime,
  ContainerVolumesError,
  FakeMounter,
  type Mode,
  type VolumeInfo,
  type VolumeMount,
} from '../../src/index.js';
import { cleanupTemp, sandbox } from '../helpers/fixtures.js';
import {
  type MalformedVariant,
  type ModelContainer,
  type ModelMount,
  type ModelVolumeInfo,
  type ModelVolumesFrom,
  type Outcome,
  type Ref,
  type Resolved,
  VolumesModel,
} from '../helpers/model.js';

afterAll(cleanupTemp);

const SEQUENCES = 200;
const MAX_COMMANDS = 25;
const UNKNOWN_CONTAINER = '0f0e0d0c-0b0a-4908-8706-050403020100';
const UNKNOWN_VOLUME = '1f1e1d1c-1b1a-4918-8716-151413121110';

// ---------------------------------------------------------------------------------------
// The library side: one fresh store per sequence, and the id mapping
// ---------------------------------------------------------------------------------------

interface World {
  dir: string;
  root: string;
  runtime: ContainerRuntime;
  fake: FakeMounter;
  /** Real ids by model index. */
  containerIds: string[];
  volumeIds: string[];
  /** Rootfs directories by the index the model records for each container. */
  rootfsDirs: string[];
  /** Real id → model name (`C3`, `V7`). */
  names: Map<string, string>;
}

async function newWorld(): Promise<World> {
  const fake = new FakeMounter();
  const sb = await sandbox(fake);
  return { dir: sb.dir, root: sb.root, runtime: sb.runtime, fake, containerIds: [], volumeIds: [], rootfsDirs: [], names: new Map() };
}

/** What the library is given for a reference the model resolved: the mapped uuid, or a malformed variant of one. */
function realRef(ids: readonly string[], ref: Resolved, unknown: string): unknown {
  if ('id' in ref) return ids[ref.id];
  if ('unknown' in ref) return unknown;
  const base = ref.base === undefined ? unknown : (ids[ref.base] as string);
  switch (ref.malformed) {
    // A uuid without a letter has no upper-case form; one with a trailing newline is as malformed.
    case 'upper':
      return base.toUpperCase() === base ? `${base}\n` : base.toUpperCase();
    case 'slash':
      return `${base}/x`;
    case 'dotdot':
      return `../${base}`;
    case 'empty':
      return '';
    case 'number':
      return 42;
  }
}

function refText(ref: Resolved, prefix: 'C' | 'V'): string {
  if ('id' in ref) return `${prefix}${ref.id}`;
  if ('unknown' in ref) return `${prefix}?`;
  return `bad:${ref.malformed}(${prefix}${ref.base ?? '?'})`;
}

// ---------------------------------------------------------------------------------------
// Both sides shown in one vocabulary, so a single toEqual compares them
// ---------------------------------------------------------------------------------------

interface ShownMount {
  path: string;
  volume: string;
  mode: string;
  origin: string;
}
interface ShownContainer {
  id: string;
  rootfs: string;
  mounted: boolean;
  volumes: ShownMount[];
}
interface ShownVolume {
  id: string;
  usedBy: { containerId: string; path: string; mode: string }[];
}

const modelMount = (v: ModelMount): ShownMount => ({
  path: v.path,
  volume: `V${v.volume}`,
  mode: v.mode,
  origin: v.origin === 'created' ? 'created' : `from C${v.origin.from}`,
});
const modelContainer = (c: ModelContainer): ShownContainer => ({
  id: `C${c.id}`,
  rootfs: `rootfs${c.rootfs}`,
  mounted: c.mounted,
  volumes: c.volumes.map(modelMount),
});
const modelVolume = (v: ModelVolumeInfo): ShownVolume => ({
  id: `V${v.id}`,
  usedBy: v.usedBy.map((u) => ({ containerId: `C${u.containerId}`, path: u.path, mode: u.mode })),
});

/** A real id the mapping does not know stays visible as such, so it shows in the diff. */
const nameOf = (w: World, id: string) => w.names.get(id) ?? `unmapped ${id}`;

const realMount = (w: World, v: VolumeMount): ShownMount => ({
  path: v.path,
  volume: nameOf(w, v.volumeId),
  mode: v.mode,
  origin: v.origin === 'created' ? 'created' : `from ${nameOf(w, v.origin.from)}`,
});
function realContainer(w: World, c: ContainerInfo): ShownContainer {
  expect(Number.isNaN(Date.parse(c.createdAt))).toBe(false);
  const rootfs = w.rootfsDirs.indexOf(c.rootfs);
  return { id: nameOf(w, c.id), rootfs: rootfs === -1 ? c.rootfs : `rootfs${rootfs}`, mounted: c.mounted, volumes: c.volumes.map((v) => realMount(w, v)) };
}
function realVolume(w: World, v: VolumeInfo): ShownVolume {
  expect(v.hostPath).toBe(path.join(w.root, 'volumes', v.id));
  expect(Number.isNaN(Date.parse(v.createdAt))).toBe(false);
  return {
    id: nameOf(w, v.id),
    // Only the set of users is specified, not its order.
    usedBy: v.usedBy.map((u) => ({ containerId: nameOf(w, u.containerId), path: u.path, mode: u.mode })).sort(byName('containerId')),
  };
}

const numberOf = (name: string) => Number(name.slice(1));
const byName =
  <K extends string>(key: K) =>
  (a: Record<K, string>, b: Record<K, string>) =>
    numberOf(a[key]) - numberOf(b[key]) || (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0);

// ---------------------------------------------------------------------------------------
// Running one command on both sides
// ---------------------------------------------------------------------------------------

let sequencesRun = 0;
let commandsRun = 0;

/**
 * Runs the library call and compares it with the model's outcome: the same error code,
 * or the same result once the uuids of volumes the model says are new are mapped.
 */
async function agree<T, R>(
  w: World,
  what: string,
  expected: Outcome<T>,
  call: () => Promise<R>,
  show: { model: (t: T) => unknown; real: (r: R) => unknown; newVolumes?: (r: R) => VolumeMount[] },
): Promise<void> {
  let actual: { ok: R } | { error: unknown };
  try {
    actual = { ok: await call() };
  } catch (error) {
    actual = { error };
  }
  if ('error' in expected) {
    if ('ok' in actual) throw new Error(`${what}: the model expects ${expected.error}, the library resolved`);
    const { error } = actual;
    if (!(error instanceof ContainerVolumesError)) throw new Error(`${what}: expected ${expected.error}, got a non-library error`, { cause: error });
    expect({ what, code: error.code }).toEqual({ what, code: expected.error });
    return;
  }
  if ('error' in actual) {
    const { error } = actual;
    throw new Error(`${what}: the model expects success, the library threw ${(error as { code?: string }).code}: ${(error as Error).message}`);
  }
  for (const { path: at, volume } of expected.created ?? []) {
    const made = show.newVolumes?.(actual.ok).find((v) => v.path === at && v.origin === 'created');
    // A uuid seen before is not a new volume: it keeps its old name, and the comparison shows it.
    if (made && !w.names.has(made.volumeId)) {
      expect(w.volumeIds.length).toBe(volume);
      w.volumeIds.push(made.volumeId);
      w.names.set(made.volumeId, `V${volume}`);
    }
  }
  expect({ what, result: show.real(actual.ok) }).toEqual({ what, result: show.model(expected.ok) });
}

/** The whole observable state of the library, compared with the model's after every command. */
async function sameState(m: VolumesModel, w: World, after: string): Promise<void> {
  const containers = await w.runtime.list();
  // Oldest first (by createdAt, then id) is specified; creation order must not contradict createdAt.
  const byAge = [...containers].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  expect(containers.map((c) => c.id)).toEqual(byAge.map((c) => c.id));
  const shown = containers.map((c) => realContainer(w, c)).sort(byName('id'));
  expect({ after, containers: shown }).toEqual({ after, containers: m.list().map(modelContainer) });
  const created = shown.map((c) => containers.find((r) => nameOf(w, r.id) === c.id)?.createdAt ?? '');
  expect(created).toEqual([...created].sort());

  const volumes = await w.runtime.volumes.list();
  const volumesByAge = [...volumes].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  expect(volumes.map((v) => v.id)).toEqual(volumesByAge.map((v) => v.id));
  expect({ after, volumes: volumes.map((v) => realVolume(w, v)).sort(byName('id')) }).toEqual({
    after,
    volumes: m.listVolumes().map(modelVolume),
  });

  // Every rootfs ever used: a live mounted container has exactly its volumes there, any other nothing.
  let expectedMounts = 0;
  for (const [index, rootfs] of w.rootfsDirs.entries()) {
    const owner = [...m.containers.values()].find((c) => c.rootfs === index);
    const expected = owner?.mounted ? owner.volumes.map((v) => ({ path: v.path, mode: v.mode, source: `V${v.volume}` })) : [];
    expectedMounts += expected.length;
    const mounted = (await w.fake.list(rootfs)).map((v) => ({
      path: v.path,
      mode: v.mode,
      source: v.source === undefined ? 'no source' : nameOf(w, path.basename(v.source)),
    }));
    expect({ after, rootfs: `rootfs${index}`, mounted }).toEqual({ after, rootfs: `rootfs${index}`, mounted: expected });
  }
  // Nothing mounted anywhere else, and nothing stacked: each mount made was either undone or is expected.
  expect((await w.fake.list('/')).length).toBe(expectedMounts);
  const made = w.fake.calls.filter((c) => c.op === 'mount').length - w.fake.calls.filter((c) => c.op === 'unmount').length;
  expect({ after, mountsLeft: made }).toEqual({ after, mountsLeft: expectedMounts });
}

type Cmd = fc.AsyncCommand<VolumesModel, World>;

/**
 * A reference as a command shows it: once run, as resolved in its last run (`C3`, `V2`,
 * `C?` for an unknown id, `bad:upper(C1)`), so a counterexample reads `mount(C2)`;
 * before, as generated (`live#7`).
 */
function showRef(ref: Ref | Resolved, prefix: 'C' | 'V'): string {
  if (!('kind' in ref)) return refText(ref, prefix);
  return ref.kind === 'unknown' ? 'unknown' : ref.kind === 'malformed' ? `bad:${ref.variant}#${ref.n}` : `${ref.kind}#${ref.n}`;
}

/**
 * Each command resolves its references against the model, runs its call on both sides,
 * then checks the whole state.
 */
abstract class Base implements Cmd {
  check(): boolean {
    // Invalid commands are part of the test: every command applies in every state.
    return true;
  }
  async run(m: VolumesModel, w: World): Promise<void> {
    commandsRun++;
    await this.apply(m, w);
    await sameState(m, w, this.toString());
  }
  protected abstract apply(m: VolumesModel, w: World): Promise<void>;
  abstract toString(): string;
}

const containerShow = (w: World) => ({
  model: modelContainer,
  real: (c: ContainerInfo) => realContainer(w, c),
});
const mountsShow = (w: World) => ({
  model: (ms: ModelMount[]) => ms.map(modelMount),
  real: (ms: VolumeMount[]) => ms.map((v) => realMount(w, v)),
  newVolumes: (ms: VolumeMount[]) => ms,
});
const nothing = { model: () => undefined, real: (r: void) => r };

type RootfsKind = 'fresh' | 'missing' | 'relative';
interface FromEntry {
  ref: Ref;
  /** '' (keep modes), ':ro', ':rw', or something invalid. */
  suffix: string;
}

class Create extends Base {
  #from: Resolved[] = [];
  constructor(
    readonly paths: unknown,
    readonly from: FromEntry[],
    readonly rootfs: RootfsKind,
  ) {
    super();
  }
  protected async apply(m: VolumesModel, w: World): Promise<void> {
    let rootfs: string;
    if (this.rootfs === 'fresh') {
      rootfs = path.join(w.dir, 'rootfs', `r${w.rootfsDirs.length}`);
      await fs.mkdir(rootfs, { recursive: true });
    } else rootfs = this.rootfs === 'missing' ? path.join(w.dir, 'no-such-rootfs') : 'rootfs/relative';
    this.#from = this.from.map(({ ref }) => m.resolveContainer(ref));
    const entries = this.#from.map((resolved, i) => {
      const id = realRef(w.containerIds, resolved, UNKNOWN_CONTAINER);
      const { suffix } = this.from[i] as FromEntry;
      // With a suffix, a number becomes part of a string: '#42', never '42', which may begin a real id.
      return suffix === '' ? id : `${typeof id === 'number' ? `#${id}` : String(id)}${suffix}`;
    });
    const modelFrom = this.#from.map(
      (resolved, i): ModelVolumesFrom => ({
        source: typeof entries[i] === 'string' ? resolved : 'not-a-string',
        mode: (this.from[i] as FromEntry).suffix === '' ? undefined : (this.from[i] as FromEntry).suffix.slice(1),
      }),
    );
    const what = this.toString();
    const expected = m.create(this.paths, modelFrom, this.rootfs === 'fresh' ? w.rootfsDirs.length : 'invalid');
    if (this.rootfs === 'fresh') w.rootfsDirs.push(rootfs);
    const spec = { rootfs, volumes: this.paths as string[], volumesFrom: entries as string[] };
    await agree(w, what, expected, () => w.runtime.create(spec), {
      ...containerShow(w),
      newVolumes: (c) => c.volumes,
      real: (c) => {
        // The container is new: map its id before it is shown.
        if ('ok' in expected && !w.names.has(c.id)) {
          expect(w.containerIds.length).toBe(expected.ok.id);
          w.containerIds.push(c.id);
          w.names.set(c.id, `C${expected.ok.id}`);
        }
        return realContainer(w, c);
      },
    });
  }
  toString(): string {
    const from = this.from.map((f, i) => `${showRef(this.#from[i] ?? f.ref, 'C')}${f.suffix}`);
    return `create(rootfs ${this.rootfs}, volumes ${JSON.stringify(this.paths)}, volumesFrom [${from.join(', ')}])`;
  }
}

class CreateVolumes extends Base {
  constructor(
    readonly ref: Ref,
    readonly paths: unknown,
  ) {
    super();
  }
  #target: Resolved | undefined;
  protected async apply(m: VolumesModel, w: World): Promise<void> {
    const target = (this.#target = m.resolveContainer(this.ref));
    const what = this.toString();
    const id = realRef(w.containerIds, target, UNKNOWN_CONTAINER) as string;
    await agree(w, what, m.createVolumes(target, this.paths), () => w.runtime.createVolumes(id, this.paths as string[]), mountsShow(w));
  }
  toString(): string {
    return `createVolumes(${showRef(this.#target ?? this.ref, 'C')}, ${JSON.stringify(this.paths)})`;
  }
}

class Share extends Base {
  constructor(
    readonly ref: Ref,
    readonly source: Ref,
    readonly mode: unknown,
  ) {
    super();
  }
  #refs: [Resolved, Resolved] | undefined;
  protected async apply(m: VolumesModel, w: World): Promise<void> {
    const target = m.resolveContainer(this.ref);
    const from = m.resolveContainer(this.source, target);
    this.#refs = [target, from];
    const what = this.toString();
    const id = realRef(w.containerIds, target, UNKNOWN_CONTAINER) as string;
    const source = realRef(w.containerIds, from, UNKNOWN_CONTAINER) as string;
    const options = this.mode === undefined ? undefined : { mode: this.mode as Mode };
    await agree(w, what, m.shareVolumesFrom(target, from, this.mode), () => w.runtime.shareVolumesFrom(id, source, options), mountsShow(w));
  }
  toString(): string {
    const [target, from] = this.#refs ?? [this.ref, this.source];
    return `shareVolumesFrom(${showRef(target, 'C')}, ${showRef(from, 'C')}${this.mode === undefined ? '' : `, { mode: ${JSON.stringify(this.mode)} }`})`;
  }
}

/** A call that takes one container reference: mount, unmount, get, remove. */
class OnContainer extends Base {
  constructor(
    readonly op: 'mount' | 'unmount' | 'get' | 'remove',
    readonly ref: Ref,
    readonly options: { force: boolean; volumes: boolean } = { force: false, volumes: false },
  ) {
    super();
  }
  #target: Resolved | undefined;
  protected async apply(m: VolumesModel, w: World): Promise<void> {
    const target = (this.#target = m.resolveContainer(this.ref));
    const what = this.toString();
    const id = realRef(w.containerIds, target, UNKNOWN_CONTAINER) as string;
    const { runtime } = w;
    switch (this.op) {
      case 'mount':
        return agree(w, what, m.setMounted(target, true), () => runtime.mount(id), containerShow(w));
      case 'unmount':
        return agree(w, what, m.setMounted(target, false), () => runtime.unmount(id), containerShow(w));
      case 'get':
        return agree(w, what, m.get(target), () => runtime.get(id), containerShow(w));
      case 'remove': {
        const { force, volumes } = this.options;
        return agree(w, what, m.remove(target, force, volumes), () => runtime.remove(id, this.options), nothing);
      }
    }
  }
  toString(): string {
    const options = this.op === 'remove' ? `, ${JSON.stringify(this.options)}` : '';
    return `${this.op}(${showRef(this.#target ?? this.ref, 'C')}${options})`;
  }
}

/** A call that takes one volume reference: volumes.remove, volumes.inspect. */
class OnVolume extends Base {
  constructor(
    readonly op: 'remove' | 'inspect',
    readonly ref: Ref,
  ) {
    super();
  }
  #target: Resolved | undefined;
  protected async apply(m: VolumesModel, w: World): Promise<void> {
    const target = (this.#target = m.resolveVolume(this.ref));
    const what = this.toString();
    const id = realRef(w.volumeIds, target, UNKNOWN_VOLUME) as string;
    const { volumes } = w.runtime;
    if (this.op === 'remove') await agree(w, what, m.removeVolume(target), () => volumes.remove(id), nothing);
    else await agree(w, what, m.inspect(target), () => volumes.inspect(id), { model: modelVolume, real: (v: VolumeInfo) => realVolume(w, v) });
  }
  toString(): string {
    return `volumes.${this.op}(${showRef(this.#target ?? this.ref, 'V')})`;
  }
}

class Prune extends Base {
  protected async apply(m: VolumesModel, w: World): Promise<void> {
    await agree(w, this.toString(), { ok: m.prune() }, () => w.runtime.volumes.prune(), {
      model: (ids) => ids.map((id) => `V${id}`),
      // Which volumes were freed is specified, not in what order.
      real: (r) => r.removed.map((id) => nameOf(w, id)).sort((a, b) => numberOf(a) - numberOf(b)),
    });
  }
  toString(): string {
    return 'volumes.prune()';
  }
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

const VARIANTS: MalformedVariant[] = ['upper', 'slash', 'dotdot', 'empty', 'number'];
const ref: fc.Arbitrary<Ref> = fc.oneof(
  { weight: 12, arbitrary: fc.nat(40).map((n): Ref => ({ kind: 'live', n })) },
  { weight: 6, arbitrary: fc.nat(40).map((n): Ref => ({ kind: 'idle', n })) },
  { weight: 4, arbitrary: fc.nat(40).map((n): Ref => ({ kind: 'any', n })) },
  { weight: 1, arbitrary: fc.constant<Ref>({ kind: 'unknown' }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('malformed' as const), n: fc.nat(40), variant: fc.constantFrom(...VARIANTS) }) },
);

/** Few distinct paths, so that sequences collide: duplicates, nesting, and shares that cover each other. */
const GOOD_PATHS = ['/a', '/a/b', '/a/b/c', '/b', '/data', '/var/log'];
/** The same paths spelled otherwise: cleaned to one of the above. */
const SPELLINGS = ['/a/', '//a', '/a/./b', '/a//b/', '/data/.', '/var/log/'];
const BAD_PATHS: unknown[] = ['/', '//', '/.', 'a', '', '/a/../b', '/..', '/a\0', `/${'x'.repeat(256)}`, `/${'d/'.repeat(2048)}`, 42, null];
const volumePath = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom(...GOOD_PATHS) },
  { weight: 3, arbitrary: fc.constantFrom(...SPELLINGS) },
  { weight: 1, arbitrary: fc.constantFrom(...BAD_PATHS) },
);
const pathList: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 30, arbitrary: fc.array(volumePath, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.constantFrom<unknown>('/a', { path: '/a' }) },
);

const fromEntry: fc.Arbitrary<FromEntry> = fc.record({
  ref,
  suffix: fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom('', ':ro', ':rw') },
    { weight: 1, arbitrary: fc.constantFrom(':x', ':', ':RO', ':ro,rw', ':ro:rw', ':z') },
  ),
});

const shareMode = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom<unknown>(undefined, 'ro', 'rw') },
  { weight: 1, arbitrary: fc.constantFrom<unknown>('x', '', 'RO', 'ro,rw', null, 1) },
);

const volumesFrom = fc.oneof({ weight: 1, arbitrary: fc.constant<FromEntry[]>([]) }, { weight: 1, arbitrary: fc.array(fromEntry, { minLength: 1, maxLength: 3 }) });
const rootfsKind = fc.oneof(
  { weight: 10, arbitrary: fc.constant<RootfsKind>('fresh') },
  { weight: 1, arbitrary: fc.constantFrom<RootfsKind>('missing', 'relative') },
);

/** Every sequence starts from a few containers, so that most commands have something to act on. */
const PRELUDE = fc.array(
  fc.tuple(pathList, volumesFrom).map(([paths, from]) => new Create(paths, from, 'fresh')),
  { minLength: 1, maxLength: 3 },
);

const COMMAND: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(pathList, volumesFrom, rootfsKind).map(([paths, from, rootfs]) => new Create(paths, from, rootfs)) },
  { weight: 2, arbitrary: fc.tuple(ref, pathList).map(([r, paths]) => new CreateVolumes(r, paths)) },
  { weight: 4, arbitrary: fc.tuple(ref, ref, shareMode).map(([r, s, mode]) => new Share(r, s, mode)) },
  { weight: 3, arbitrary: ref.map((r) => new OnContainer('mount', r)) },
  { weight: 2, arbitrary: ref.map((r) => new OnContainer('unmount', r)) },
  { weight: 1, arbitrary: ref.map((r) => new OnContainer('get', r)) },
  {
    weight: 2,
    arbitrary: fc.tuple(ref, fc.boolean(), fc.boolean()).map(([r, force, volumes]) => new OnContainer('remove', r, { force, volumes })),
  },
  { weight: 2, arbitrary: ref.map((r) => new OnVolume('remove', r)) },
  { weight: 1, arbitrary: ref.map((r) => new OnVolume('inspect', r)) },
  { weight: 1, arbitrary: fc.constant(new Prune()) },
);

test(`the library agrees with the model of SPEC §4 on ${SEQUENCES} random command sequences`, async () => {
  await fc.assert(
    fc.asyncProperty(PRELUDE, fc.commands([COMMAND], { maxCommands: MAX_COMMANDS, size: 'max' }), async (prelude, commands) => {
      sequencesRun++;
      const world = await newWorld();
      try {
        await fc.asyncModelRun(() => ({ model: new VolumesModel(), real: world }), [...prelude, ...commands]);
      } finally {
        await fs.rm(world.dir, { recursive: true, force: true });
      }
    }),
    { numRuns: SEQUENCES },
  );
  console.log(`model-based test: ${sequencesRun} command sequences, ${commandsRun} commands, each checked against the model`);
}, 300_000);

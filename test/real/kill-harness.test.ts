import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime, type RecoveryReport } from '../../src/index.js';
import { checkJournal, checkStore, type JournalLine, type Layout } from '../helpers/invariants.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { onJsonLines } from '../helpers/processes.js';
import { random } from '../helpers/worker.mjs';
import { assertPrivateMountNamespace } from './guard.js';
import { NOTHING_RECOVERED as NOTHING } from '../helpers/fixtures.js';

/*
 * The kill harness (issue 4, item 2). A child process (test/helpers/kill-worker.mjs, on
 * the built package) does random work with real bind mounts on one store and is killed
 * with SIGKILL at a random moment; then a fresh runtime runs recover() and the
 * invariants of SPEC §5 are checked (test/helpers/invariants.ts), a second recover()
 * must find nothing to do, and the store must take new work. The store is kept from one
 * kill to the next, so damage accumulates as it would for a long-lived orchestrator.
 * Rootfs directories are made both in a private directory and under a shared mount with
 * a peer (BindMounter stages and moves binds there), and the peer is checked too.
 *
 * KILL_HARNESS_SEED replays a run's choices (the moments of the kills depend on timing
 * too); KILL_HARNESS_KILLS changes how many kills are made.
 */

const WORKER = fileURLToPath(new URL('../helpers/kill-worker.mjs', import.meta.url));
const DIST = fileURLToPath(new URL('../../dist/index.js', import.meta.url));
const KILLS = Number(process.env.KILL_HARNESS_KILLS ?? 220);
const SEED = Number(process.env.KILL_HARNESS_SEED ?? Date.now() % 2 ** 31);
/** Above this many containers the harness removes the oldest, so a round's cost stays flat. */
const MAX_CONTAINERS = 20;

let dir: string;
/** Until the harness completes: the store of a run that failed is kept as evidence. */
let failed = true;
const children: ChildProcess[] = [];

beforeAll(() => {
  assertPrivateMountNamespace();
  if (!fs.existsSync(DIST)) throw new Error(`${DIST} is missing: the kill harness runs the built package; build it first with \`npx tsup\``);
  dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'kill-harness-')));
});

afterAll(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  if (!dir) return;
  // Detaching the shared tree and its peer first takes their submounts with them, which
  // one by one would fail on copies already gone by propagation.
  for (const top of mountsUnder(dir).filter((m) => path.dirname(m.mountPoint) === dir)) execFileSync('umount', ['-l', top.mountPoint]);
  unmountAllUnder(dir);
  if (failed) console.log(`kill harness: the store of the failed run is kept at ${dir}`);
  else fs.rmSync(dir, { recursive: true, force: true });
});

interface Worker {
  child: ChildProcess;
  seed: number;
  ownNamespace: boolean;
  journal: JournalLine[];
  /** The library is loaded; the worker waits for "go". */
  ready: Promise<void>;
  /** It has read the store and starts its first operation. */
  started: Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/**
 * `ownNamespace`: the worker runs in a mount namespace of its own (`unshare -m`, which
 * execs it: same pid and process group), with propagation unchanged, so that what it
 * mounts under the shared rootfs parent shows here and at the peer too; the namespace
 * dies with it.
 */
function startWorker(root: string, layout: Layout, seed: number, tag: string, ownNamespace: boolean): Worker {
  const command = [process.execPath, WORKER, root, String(seed), tag, ...layout.rootfsParents];
  // Its own process group, so that the mount, umount and cp it runs can be waited for after it dies.
  const child = spawn(ownNamespace ? 'unshare' : (command.shift() as string), ownNamespace ? ['-m', '--propagation', 'unchanged', '--', ...command] : command, {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
    env: { ...process.env, DEBUG: '', KILL_WORKER_OWN_NAMESPACE: ownNamespace ? '1' : '0' },
  });
  children.push(child);
  const journal: JournalLine[] = [];
  const waiting = new Map<string, () => void>();
  let stderr = '';
  onJsonLines<JournalLine>(child.stdout!, (line) => {
    journal.push(line);
    waiting.get(line.op)?.();
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  const line = (op: JournalLine['op']) => {
    const seen = new Promise<void>((resolve) => waiting.set(op, resolve));
    const early = exited.then(({ code, signal }) => {
      throw new Error(`worker ${seed} exited (${code ?? signal}) before it printed ${op}: ${stderr}`);
    });
    const either = Promise.race([seen, early]);
    // Not every worker is awaited on every line: the last one is killed unstarted.
    either.catch(() => undefined);
    return either;
  };
  return { child, seed, ownNamespace, journal, ready: line('ready'), started: line('started'), exited };
}

/**
 * Waits until nothing the killed worker started still runs. Its children (mount, umount,
 * cp) outlive it and are reaped by init, which here may take seconds, so a zombie counts
 * as finished.
 */
async function settle(processGroup: number): Promise<void> {
  for (;;) {
    let running = false;
    for (const name of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      let stat: string;
      try {
        stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      } catch {
        continue;
      }
      // The fields after the command name, which may itself hold spaces and parentheses.
      const [state, , group] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(group) === processGroup && state !== 'Z' && state !== 'X') running = true;
    }
    if (!running) return;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/**
 * A lock left by the killed worker would be taken over once STALE_MS old (the
 * multi-process tests show that); aging it by hand makes the next locker take it over
 * at once, through the same path, instead of waiting seconds at every kill.
 */
function ageLeftLock(root: string): boolean {
  try {
    fs.utimesSync(path.join(root, 'lock'), 0, 0);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

describe('kill harness (SPEC §5)', () => {
  test(`a worker SIGKILLed ${KILLS} times at random moments: recover() always leaves a sound store`, async () => {
    const root = path.join(dir, 'state');
    const layout = sharedAndPrivateRootfs(dir);
    const rand = random(SEED);
    const seedOf = () => Math.floor(rand() * 2 ** 31);
    console.log(`kill harness: seed ${SEED} (replay with KILL_HARNESS_SEED=${SEED}), store at ${root}`);

    const totals = { kills: 0, inOwnNamespace: 0, checks: 0, acks: 0, refusals: 0, begun: 0, locksLeft: 0, killedBeforeWork: 0, repairs: 0 };
    const didSomething: Record<keyof RecoveryReport, { recoveries: number; items: number }> = {
      rebooted: { recoveries: 0, items: 0 },
      namespaceGone: { recoveries: 0, items: 0 },
      attachmentsGone: { recoveries: 0, items: 0 },
      removedHandlers: { recoveries: 0, items: 0 },
      unmounted: { recoveries: 0, items: 0 },
      remounted: { recoveries: 0, items: 0 },
      removedVolumes: { recoveries: 0, items: 0 },
      removedFiles: { recoveries: 0, items: 0 },
      failed: { recoveries: 0, items: 0 },
    };
    const started = Date.now();
    let before = new Set<string>();
    let next = startWorker(root, layout, seedOf(), 'k0', false);

    for (let kill = 0; kill < KILLS; kill++) {
      const worker = next;
      await worker.ready;
      // The next worker loads the library while this one works and the store is checked.
      // Every other worker in a mount namespace of its own.
      next = startWorker(root, layout, seedOf(), `k${kill + 1}`, (kill + 1) % 2 === 1);
      // Some kills right after "go", while the worker opens the store; the rest spread
      // over its operations, counted from the first one so that a slow start under load
      // does not turn them into kills before any work.
      const early = rand() < 0.1;
      const delay = early ? Math.floor(rand() * 5) : 5 + Math.floor(rand() * 146);
      worker.child.stdin!.write('go\n');
      // A worker that dies before starting is reported below, with what it printed.
      if (!early) await worker.started.catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, delay));
      worker.child.kill('SIGKILL');
      const exit = await worker.exited;
      await settle(worker.child.pid!);
      totals.kills++;
      if (worker.ownNamespace) totals.inOwnNamespace++;

      const failure = (what: string, details: unknown) => {
        const tail = worker.journal.slice(-12).map((l) => JSON.stringify(l));
        return new Error(
          [
            `kill harness: ${what}`,
            `seed ${SEED} (KILL_HARNESS_SEED=${SEED}), kill #${kill}, worker seed ${worker.seed}${worker.ownNamespace ? ' (own mount namespace)' : ''}, killed ${delay} ms after ${early ? '"go"' : 'its first operation began'}, store ${root}`,
            `the worker's last lines:\n  ${tail.join('\n  ')}`,
            `details: ${JSON.stringify(details, null, 2)}`,
          ].join('\n'),
        );
      };
      const errors = worker.journal.filter((l) => l.op === 'error');
      if (errors.length > 0 || exit.signal !== 'SIGKILL') throw failure('the worker failed on its own before the kill', { exit, errors });

      if (ageLeftLock(root)) totals.locksLeft++;
      const begun = worker.journal.filter((l) => l.op === 'begin');
      totals.begun += begun.length;
      if (begun.length === 0) totals.killedBeforeWork++;
      totals.acks += worker.journal.filter((l) => l.op === 'ack').length;
      totals.refusals += worker.journal.filter((l) => l.op === 'refused').length;

      const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
      let report: RecoveryReport;
      try {
        report = await runtime.recover();
      } catch (error) {
        throw failure('recover() failed', { error: String((error as Error).stack) });
      }
      if (report.failed.length > 0) throw failure('recover() could not repair some containers', { report });
      if (!isDeepStrictEqual(report, NOTHING)) totals.repairs++;
      for (const key of Object.keys(didSomething) as (keyof RecoveryReport)[]) {
        if (report[key].length === 0) continue;
        didSomething[key].recoveries++;
        didSomething[key].items += report[key].length;
      }

      const state = await checkStore(runtime, root, layout);
      const journal = checkJournal(worker.journal, before, state, worker.ownNamespace);
      totals.checks += state.checks + journal.checks;
      const violations = [...state.violations, ...journal.violations];
      if (violations.length > 0) {
        throw failure(`${violations.length} invariant(s) broken after recover()`, {
          violations,
          report,
          containers: state.containers.map((c) => ({ id: c.id, rootfs: c.rootfs, mounted: c.mounted, volumes: c.volumes })),
          mounts: mountsUnder(dir).map((m) => `${m.mountPoint} ${m.root} ${m.options.join(',')} ${m.optional.join(' ')}`),
        });
      }

      const again = await runtime.recover();
      totals.checks++;
      if (!isDeepStrictEqual(again, NOTHING)) throw failure('a second recover() still found work', { first: report, second: again });

      try {
        const parent = layout.rootfsParents[kill % layout.rootfsParents.length] as string;
        totals.checks += await newWork(runtime, root, path.join(parent, `probe-${kill}`), state.containers[0]?.id);
      } catch (error) {
        throw failure('the recovered store refused new work', { error: String((error as Error).stack), report });
      }

      await trim(runtime, layout, state.containers);
      before = new Set(fs.readdirSync(path.join(root, 'volumes')));
    }
    next.child.kill('SIGKILL');
    await next.exited;
    failed = false;

    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const fields = Object.entries(didSomething).map(([key, { recoveries, items }]) => `${key} ${recoveries} (${items} items)`);
    console.log(
      [
        `kill harness: ${totals.kills} kills (${totals.inOwnNamespace} of workers in a mount namespace of their own) in ${seconds} s, ${totals.checks} invariant checks, all held`,
        `  operations: ${totals.begun} begun, ${totals.acks} acknowledged, ${totals.refusals} refused as expected; ${totals.killedBeforeWork} kills before the first operation`,
        `  locks left by a killed worker: ${totals.locksLeft}`,
        `  recoveries that did something: ${totals.repairs} of ${totals.kills}; by report field: ${fields.join(', ')}`,
      ].join('\n'),
    );
    expect(totals.kills).toBeGreaterThanOrEqual(Math.min(KILLS, 200));
    expect(totals.kills - totals.killedBeforeWork).toBeGreaterThanOrEqual(totals.kills / 2);
  }, 600_000);
});

/** The store takes new work: create (sharing from an existing container), mount, unmount, remove. Returns the checks made. */
async function newWork(runtime: ContainerRuntime, root: string, rootfs: string, shareFrom: string | undefined): Promise<number> {
  fs.mkdirSync(rootfs);
  const info = await runtime.create({ rootfs, volumes: ['/probe'], volumesFrom: shareFrom ? [`${shareFrom}:ro`] : [] });
  await runtime.mount(info.id);
  const mounted = mountsUnder(rootfs);
  expect(mounted.map((m) => m.mountPoint).sort()).toEqual(info.volumes.map((v) => path.join(rootfs, v.path)).sort());
  fs.writeFileSync(path.join(rootfs, 'probe/file'), 'x');
  await runtime.unmount(info.id);
  expect(mountsUnder(rootfs)).toEqual([]);
  await runtime.remove(info.id, { volumes: true });
  const own = info.volumes.filter((v) => v.origin === 'created').map((v) => v.volumeId);
  expect(own.filter((id) => fs.existsSync(path.join(root, 'volumes', id)))).toEqual([]);
  fs.rmSync(rootfs, { recursive: true });
  return 4;
}

/** Keeps the store small: removes the oldest containers past the cap, and the rootfs directories nothing uses. */
async function trim(runtime: ContainerRuntime, layout: Layout, containers: readonly { id: string; rootfs: string }[]): Promise<void> {
  let kept = [...containers];
  if (kept.length > MAX_CONTAINERS) {
    for (const c of kept.slice(0, kept.length - MAX_CONTAINERS / 2)) await runtime.remove(c.id, { force: true, volumes: true });
    kept = kept.slice(kept.length - MAX_CONTAINERS / 2);
    await runtime.volumes.prune();
  }
  const used = new Set(kept.map((c) => c.rootfs));
  for (const parent of layout.rootfsParents) {
    const peers = layout.peers.filter((p) => p.of === parent).map((p) => p.peer);
    for (const name of fs.readdirSync(parent)) {
      const rootfs = path.join(parent, name);
      // Never recursively delete through a mount: it would delete a volume's data.
      if (used.has(rootfs) || [rootfs, ...peers.map((p) => path.join(p, name))].some((view) => mountsUnder(view).length > 0)) continue;
      fs.rmSync(rootfs, { recursive: true, force: true });
    }
  }
}

/**
 * Two places for rootfs directories: a private directory, and a shared mount with a
 * peer elsewhere, as on a host where systemd makes / shared and another mount
 * namespace sees the same tree. BindMounter takes another path for the second.
 */
function sharedAndPrivateRootfs(base: string): Layout {
  const [privateDir, sharedDir, peer] = ['rootfs', 'shared-rootfs', 'peer-view'].map((name) => path.join(base, name)) as [string, string, string];
  for (const d of [privateDir, sharedDir, peer]) fs.mkdirSync(d);
  execFileSync('mount', ['--bind', sharedDir, sharedDir]);
  execFileSync('mount', ['--make-shared', sharedDir]);
  execFileSync('mount', ['--bind', sharedDir, peer]);
  return { rootfsParents: [privateDir, sharedDir], peers: [{ peer, of: sharedDir }] };
}

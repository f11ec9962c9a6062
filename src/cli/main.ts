#!/usr/bin/env node
// The `container-volumes` command: an operator's view of a store, on the package's
// public API only. Data goes to stdout, everything else to stderr; exit 0 on success,
// 1 when the library refused or failed (its error code printed), 2 on a usage error.
import { statSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import { BindMounter, ContainerRuntime, ContainerVolumesError, type ContainerInfo, type DiskUsage, type ErrorCode, type VolumeInfo } from 'container-volumes';
import { bytes, type Format, json, ProgressLine, shortId, table } from './output.js';

const USAGE = `Usage: container-volumes [--root DIR] COMMAND [OPTIONS]

Commands:
  ls                          containers
  inspect ID                  one container (JSON unless --format table)
  volumes ls                  volumes and who uses them
  volumes inspect ID          one volume (JSON unless --format table)
  df [--timeout SECONDS]      size of every volume and who uses it
  prune [--dry-run] [--force] delete the volumes no container uses (asks first)
  rm [-f] [-v] ID...          remove containers (-f: unmount first; -v: and their unused volumes)
  recover                     bring the store and the mounts in line after a crash or reboot
  backup ID FILE|-            archive every volume of a container (- for stdout)
  restore FILE|- --rootfs DIR new container with the volumes of an archive (- for stdin)

Options:
  --root DIR          the state root (default: $CONTAINER_VOLUMES_ROOT)
  --format json|table output for scripts or for people (default: table; json for inspect)
  -q, --quiet         ids only
  --no-trunc          full ids in tables
  -h, --help          this text

An ID may be any unique prefix of one.`;

/** A mistake in the command line: exit 2 with the usage hint. */
class UsageError extends Error {}

const OPTIONS = {
  root: { type: 'string' },
  format: { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  'no-trunc': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  force: { type: 'boolean', short: 'f' },
  volumes: { type: 'boolean', short: 'v' },
  'dry-run': { type: 'boolean' },
  rootfs: { type: 'string' },
  timeout: { type: 'string' },
} as const;
type OptionName = keyof typeof OPTIONS;
type Values = { [K in OptionName]?: (typeof OPTIONS)[K]['type'] extends 'string' ? string : boolean };

const GLOBAL: OptionName[] = ['root', 'format', 'quiet', 'no-trunc', 'help'];

interface Command {
  /** Positional arguments after the command's name: exact count, or at least `min`. */
  args: { names: string[]; min?: number; variadic?: boolean };
  options: OptionName[];
  run: (cli: Cli, args: string[]) => Promise<void>;
}

interface Cli {
  runtime: ContainerRuntime;
  values: Values;
  format: Format;
  out: (text: string) => void;
  log: (text: string) => void;
  progress: ProgressLine;
}

const COMMANDS: Record<string, Command> = {
  ls: { args: { names: [] }, options: [], run: listContainers },
  inspect: { args: { names: ['ID'] }, options: [], run: inspectContainer },
  'volumes ls': { args: { names: [] }, options: [], run: listVolumes },
  'volumes inspect': { args: { names: ['ID'] }, options: [], run: inspectVolume },
  df: { args: { names: [] }, options: ['timeout'], run: diskUsage },
  prune: { args: { names: [] }, options: ['dry-run', 'force'], run: prune },
  rm: { args: { names: ['ID'], min: 1, variadic: true }, options: ['force', 'volumes'], run: remove },
  recover: { args: { names: [] }, options: [], run: recover },
  backup: { args: { names: ['ID', 'FILE|-'] }, options: [], run: backup },
  restore: { args: { names: ['FILE|-'] }, options: ['rootfs'], run: restore },
};

async function main(argv: string[]): Promise<number> {
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true }) as typeof parsed;
  } catch (error) {
    return usage((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    (values.help ? process.stdout : process.stderr).write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const name = positionals[0] === 'volumes' && positionals.length > 1 ? `volumes ${positionals[1]}` : (positionals[0] as string);
  const command = COMMANDS[name];
  if (!command) return usage(`unknown command '${name}'`);
  const args = positionals.slice(name.split(' ').length);
  try {
    checkCommandLine(name, command, values, args);
    const cli: Cli = {
      runtime: openStore(values.root ?? process.env.CONTAINER_VOLUMES_ROOT),
      values,
      format: formatOf(values.format, name.endsWith('inspect') ? 'json' : 'table'),
      out: (text) => void process.stdout.write(text),
      log: (text) => void process.stderr.write(`${text}\n`),
      progress: new ProgressLine(process.stderr),
    };
    await command.run(cli, args);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) return usage(error.message);
    if (error instanceof ContainerVolumesError) {
      process.stderr.write(`container-volumes: ${error.code}: ${error.message}\n`);
    } else {
      process.stderr.write(`container-volumes: ${(error as Error).message ?? String(error)}\n`);
    }
    return 1;
  }
}

function usage(message: string): number {
  process.stderr.write(`container-volumes: ${message}\nRun 'container-volumes --help' for usage.\n`);
  return 2;
}

function checkCommandLine(name: string, command: Command, values: Values, args: string[]): void {
  const given = (Object.keys(values) as OptionName[]).filter((key) => values[key] !== undefined);
  const foreign = given.filter((key) => !GLOBAL.includes(key) && !command.options.includes(key));
  if (foreign.length > 0) throw new UsageError(`'${name}' takes no option ${foreign.map((key) => `--${key}`).join(', ')}`);
  const { names, min, variadic } = command.args;
  const tooFew = args.length < (min ?? names.length);
  const tooMany = !variadic && args.length > names.length;
  if (tooFew || tooMany) {
    throw new UsageError(`'${name}' takes ${names.length === 0 ? 'no arguments' : names.join(' ') + (variadic ? '...' : '')}, got ${args.length === 0 ? 'none' : args.join(' ')}`);
  }
}

function formatOf(given: string | undefined, fallback: Format): Format {
  if (given === undefined) return fallback;
  if (given === 'json' || given === 'table') return given;
  throw new UsageError(`--format must be json or table, got '${given}'`);
}

/**
 * The store the runtime made. The command never creates one: a mistyped --root is an
 * error, not a new empty store. A relative path is taken from the working directory.
 */
function openStore(root: string | undefined): ContainerRuntime {
  if (root === undefined || root === '') throw new UsageError('no state root: pass --root DIR or set CONTAINER_VOLUMES_ROOT');
  const absolute = path.resolve(root);
  let isDirectory = false;
  try {
    isDirectory = statSync(absolute).isDirectory();
  } catch {
    // reported below
  }
  if (!isDirectory) throw new ContainerVolumesError('ERR_STORE_UNAVAILABLE', `no store at ${absolute}: not a directory`);
  return new ContainerRuntime({ root: absolute, mounter: new BindMounter() });
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

async function listContainers(cli: Cli): Promise<void> {
  const containers = await cli.runtime.list();
  if (cli.values.quiet) return cli.out(ids(containers.map((c) => c.id)));
  if (cli.format === 'json') return cli.out(json(containers));
  const full = cli.values['no-trunc'] === true;
  cli.out(
    table(
      ['CONTAINER ID', 'MOUNTED', 'VOLUMES', 'CREATED', 'ROOTFS'],
      containers.map((c) => [shortId(c.id, full), mountedText(c), String(c.volumes.length), c.createdAt, c.rootfs]),
    ),
  );
}

async function inspectContainer(cli: Cli, [id]: string[]): Promise<void> {
  const container = await cli.runtime.get(id as string);
  if (cli.values.quiet) return cli.out(ids([container.id]));
  if (cli.format === 'json') return cli.out(json(container));
  const full = cli.values['no-trunc'] === true;
  cli.out(`container ${container.id}\nrootfs    ${container.rootfs}\nmounted   ${mountedText(container)}\ncreated   ${container.createdAt}\n\n`);
  cli.out(
    table(
      ['PATH', 'VOLUME ID', 'MODE', 'ORIGIN'],
      container.volumes.map((v) => [v.path, shortId(v.volumeId, full), v.mode, v.origin === 'created' ? 'created' : `from ${shortId(v.origin.from, full)}`]),
    ),
  );
}

async function listVolumes(cli: Cli): Promise<void> {
  const volumes = await cli.runtime.volumes.list();
  if (cli.values.quiet) return cli.out(ids(volumes.map((v) => v.id)));
  if (cli.format === 'json') return cli.out(json(volumes));
  const full = cli.values['no-trunc'] === true;
  cli.out(table(['VOLUME ID', 'CREATED', 'USED BY'], volumes.map((v) => [shortId(v.id, full), v.createdAt, usersText(v, full)])));
}

async function inspectVolume(cli: Cli, [id]: string[]): Promise<void> {
  const volume = await cli.runtime.volumes.inspect(id as string);
  if (cli.values.quiet) return cli.out(ids([volume.id]));
  if (cli.format === 'json') return cli.out(json(volume));
  const full = cli.values['no-trunc'] === true;
  cli.out(`volume    ${volume.id}\nhost path ${volume.hostPath}\ncreated   ${volume.createdAt}\n\n`);
  cli.out(table(['CONTAINER ID', 'PATH', 'MODE'], volume.usedBy.map((u) => [shortId(u.containerId, full), u.path, u.mode])));
}

async function diskUsage(cli: Cli): Promise<void> {
  const timeout = timeoutOf(cli.values.timeout);
  const volumes = await cli.runtime.volumes.list();
  const rows: (VolumeInfo & { usage: DiskUsage })[] = [];
  for (const [i, volume] of volumes.entries()) {
    const step = `df: volume ${i + 1}/${volumes.length} ${volume.id.slice(0, 8)}`;
    cli.progress.update(step);
    try {
      const usage = await cli.runtime.volumes.diskUsage(volume.id, {
        ...(timeout === undefined ? {} : { timeout }),
        onProgress: (u) => cli.progress.update(`${step}: ${u.files} files, ${bytes(u.apparentBytes)}`),
      });
      rows.push({ ...volume, usage });
    } catch (error) {
      // Deleted since the listing: it no longer takes any space.
      if (error instanceof ContainerVolumesError && error.code === 'ERR_VOLUME_NOT_FOUND') continue;
      throw error;
    } finally {
      cli.progress.done();
    }
  }
  const partial = rows.filter((r) => !r.usage.complete);
  if (partial.length > 0) cli.log(`df: stopped after ${cli.values.timeout}s on ${partial.length} volume(s): their figures are lower bounds`);
  if (cli.values.quiet) return cli.out(ids(rows.map((r) => r.id)));
  if (cli.format === 'json') return cli.out(json(rows));
  const full = cli.values['no-trunc'] === true;
  const atLeast = (u: DiskUsage, n: number) => `${u.complete ? '' : '>='}${bytes(n)}`;
  const total = rows.reduce((sum, r) => sum + r.usage.apparentBytes, 0);
  const allocated = rows.reduce((sum, r) => sum + r.usage.allocatedBytes, 0);
  cli.out(
    table(
      ['VOLUME ID', 'SIZE', 'ALLOCATED', 'FILES', 'USED BY'],
      rows.map((r) => [shortId(r.id, full), atLeast(r.usage, r.usage.apparentBytes), atLeast(r.usage, r.usage.allocatedBytes), String(r.usage.files), usersText(r, full)]),
    ),
  );
  const unused = rows.filter((r) => r.usedBy.length === 0);
  const lowerBound = partial.length > 0 ? '>=' : '';
  cli.out(
    `\n${rows.length} volume(s), ${lowerBound}${bytes(total)} (${lowerBound}${bytes(allocated)} allocated); ${unused.length} unused, ${bytes(unused.reduce((s, r) => s + r.usage.apparentBytes, 0))} reclaimable by prune\n`,
  );
}

async function prune(cli: Cli): Promise<void> {
  const { volumes } = cli.runtime;
  if (cli.values['dry-run']) return showPruned(cli, (await volumes.prune({ dryRun: true })).removed, true);
  if (cli.values.force) return showPruned(cli, (await volumes.prune()).removed, false);
  if (!process.stdin.isTTY) throw new UsageError('prune asks before deleting, and stdin is not a terminal: pass --force (or --dry-run to see what it would delete)');
  const preview = (await volumes.prune({ dryRun: true })).removed;
  if (preview.length === 0) return cli.log('Nothing to prune: every volume is in use.');
  cli.log(`These ${preview.length} volume(s) are used by no container and would be deleted with their data:`);
  for (const id of preview) cli.log(`  ${id}`);
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  const answer = await prompt.question('Delete them? [y/N] ').finally(() => prompt.close());
  if (!/^y(es)?$/i.test(answer.trim())) return cli.log('Nothing deleted.');
  // Exactly what was shown, each checked again: a volume someone started using since is kept.
  const removed: string[] = [];
  for (const id of preview) {
    try {
      await volumes.remove(id);
      removed.push(id);
    } catch (error) {
      if (!(error instanceof ContainerVolumesError)) throw error;
      cli.log(`kept ${id}: ${error.code}: ${error.message}`);
    }
  }
  showPruned(cli, removed, false);
}

function showPruned(cli: Cli, removed: string[], dryRun: boolean): void {
  if (cli.format === 'json' && !cli.values.quiet) return cli.out(json({ removed, dryRun }));
  if (removed.length === 0) cli.log(dryRun ? 'Nothing would be deleted.' : 'Nothing deleted.');
  else if (!cli.values.quiet) cli.log(dryRun ? `Would delete ${removed.length} volume(s):` : `Deleted ${removed.length} volume(s):`);
  cli.out(ids(removed));
}

async function remove(cli: Cli, references: string[]): Promise<void> {
  let failed: unknown;
  for (const reference of references) {
    try {
      const { id } = await cli.runtime.get(reference);
      await cli.runtime.remove(id, { force: cli.values.force === true, volumes: cli.values.volumes === true });
      cli.out(`${id}\n`);
    } catch (error) {
      // Like docker rm: report each failure and go on with the others; exit 1 at the end.
      if (!(error instanceof ContainerVolumesError) || references.length === 1) throw error;
      cli.log(`container-volumes: ${error.code}: ${error.message}`);
      failed = error;
    }
  }
  if (failed) throw new ContainerVolumesError((failed as ContainerVolumesError).code, 'some containers were not removed (see above)');
}

async function recover(cli: Cli): Promise<void> {
  const report = await cli.runtime.recover();
  if (cli.format === 'json') return cli.out(json(report));
  const lines = [
    ...report.rebooted.map((id) => `marked unmounted (host rebooted): ${id}`),
    ...report.namespaceGone.map((id) => `marked unmounted (its mount namespace is gone): ${id}`),
    ...report.removedHandlers.map((id) => `removed handler container of a dead process: ${id}`),
    ...report.unmounted.map((m) => `unmounted stray mount: ${m.containerId} ${m.path}`),
    ...report.remounted.map((m) => `mounted again: ${m.containerId} ${m.path}`),
    ...report.removedVolumes.map((id) => `deleted half-created volume: ${id}`),
    ...report.removedFiles.map((file) => `deleted leftover: ${file}`),
    ...report.failed.map((f) => `FAILED: ${f.containerId}: ${f.code}: ${f.message}`),
  ];
  if (lines.length === 0) cli.log('Nothing to recover: the store and the mounts agree.');
  cli.out(lines.map((l) => `${l}\n`).join(''));
  const [first] = report.failed;
  if (first) throw new ContainerVolumesError(first.code as ErrorCode, `${report.failed.length} container(s) could not be recovered (see above)`);
}

async function backup(cli: Cli, [id, target]: string[]): Promise<void> {
  const toStdout = target === '-';
  if (toStdout && cli.format === 'json') throw new UsageError("backup to '-' writes the archive on stdout: --format json has no room there");
  if (toStdout && process.stdout.isTTY) throw new UsageError('refusing to write an archive to a terminal: give a file or redirect stdout');
  const onProgress = ({ bytesDone, bytesTotal }: { bytesDone: number; bytesTotal: number }) =>
    cli.progress.update(`backup: ${bytesTotal > 0 ? Math.min(100, Math.floor((bytesDone / bytesTotal) * 100)) : 0}% ${bytes(bytesDone)} of ~${bytes(bytesTotal)}`);
  // The archive streams out as tar writes it: stdout is ended once it is complete, and never carries a partial one.
  const result = await cli.runtime
    .backup(id as string, toStdout ? process.stdout : path.resolve(target as string), { onProgress })
    .finally(() => cli.progress.done());
  for (const warning of result.warnings) cli.log(`backup: ${warning}`);
  if (!cli.values.quiet) cli.log(`Backed up ${result.volumes.length} volume(s) of ${result.containerId}${toStdout ? '' : ` to ${target}`}.`);
  if (cli.format === 'json' && !cli.values.quiet) cli.out(json(result));
}

async function restore(cli: Cli, [source]: string[]): Promise<void> {
  if (cli.values.rootfs === undefined) throw new UsageError('restore needs --rootfs DIR: the root filesystem of the new container');
  const rootfs = path.resolve(cli.values.rootfs);
  if (source === '-' && process.stdin.isTTY) throw new UsageError("restore from '-' reads the archive from stdin, which is a terminal");
  const onProgress = ({ bytesDone, bytesTotal }: { bytesDone: number; bytesTotal: number }) =>
    cli.progress.update(`restore: ${bytesTotal > 0 ? Math.min(100, Math.floor((bytesDone / bytesTotal) * 100)) : 0}% ${bytes(bytesDone)} of ${bytes(bytesTotal)}`);
  const container = await cli.runtime
    .restore(source === '-' ? process.stdin : path.resolve(source as string), { rootfs, onProgress })
    .finally(() => cli.progress.done());
  if (cli.format === 'json' && !cli.values.quiet) return cli.out(json(container));
  cli.out(ids([container.id]));
}

// ---------------------------------------------------------------------------------------

function ids(list: readonly string[]): string {
  return list.map((id) => `${id}\n`).join('');
}

function mountedText(container: ContainerInfo): string {
  if (container.handler) return `handler (pid ${container.handler.pid})`;
  return container.mounted ? 'yes' : 'no';
}

function usersText(volume: VolumeInfo, full: boolean): string {
  return volume.usedBy.length === 0 ? '-' : volume.usedBy.map((u) => `${shortId(u.containerId, full)}:${u.path}${u.mode === 'ro' ? ':ro' : ''}`).join(', ');
}

function timeoutOf(given: string | undefined): number | undefined {
  if (given === undefined) return undefined;
  const seconds = Number(given);
  if (!(given.trim() !== '' && Number.isFinite(seconds) && seconds > 0)) throw new UsageError(`--timeout must be a number of seconds above 0, got '${given}'`);
  return Math.max(1, Math.round(seconds * 1000));
}

process.exitCode = await main(process.argv.slice(2));

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { processState } from './processes.js';

const C_SOURCE = fileURLToPath(new URL('./swapper.c', import.meta.url));
const PERL_SOURCE = fileURLToPath(new URL('./swapper.pl', import.meta.url));
/** renameat2 has no wrapper in Perl: its raw number, which differs between architectures. */
const RENAMEAT2: Partial<Record<NodeJS.Architecture, number>> = { x64: 316, arm64: 276 };

export interface SwapCounts {
  swaps: number;
  /** Exchanges the kernel refused because a name was a mount point. */
  busy: number;
  other: number;
}

export interface Swapper {
  /** 'c' (compiled from swapper.c) or 'perl' (swapper.pl). */
  kind: 'c' | 'perl';
  /** Freezes the swapper and returns once it is stopped: the two names then stay put. */
  pause(): Promise<void>;
  resume(): void;
  /** Ends the swapper and returns what it did; the names are left in whichever order it stopped at. */
  stop(): Promise<SwapCounts>;
}

/** The command that runs the swapper: swapper.c compiled into `workDir` if gcc is there, else swapper.pl. */
function swapperCommand(workDir: string): { kind: 'c' | 'perl'; command: string; args: string[] } {
  const binary = path.join(workDir, 'swapper');
  const gcc = spawnSync('gcc', ['-O2', '-Wall', '-o', binary, C_SOURCE], { encoding: 'utf8' });
  if (gcc.status === 0) return { kind: 'c', command: binary, args: [] };
  const renameat2 = RENAMEAT2[process.arch];
  if (renameat2 === undefined) throw new Error(`no C compiler (${gcc.error?.message ?? gcc.stderr}) and no renameat2 number known for ${process.arch}`);
  return { kind: 'perl', command: 'perl', args: [PERL_SOURCE, String(renameat2)] };
}

/**
 * Starts a process that keeps exchanging `name` and `otherName` in `dir`, and resolves
 * once it is swapping. `enter` is a command that execs the swapper where it must run
 * (`nsenter --mount=… --`: inside another mount namespace, as a process there would).
 */
export async function startSwapper(dir: string, name: string, otherName: string, workDir: string, enter: readonly string[] = []): Promise<Swapper> {
  const { kind, command, args } = swapperCommand(workDir);
  const argv = [...enter, command, ...args, dir, name, otherName];
  // `enter` must exec (not fork) the swapper: pause() stops the process it started.
  const child: ChildProcess = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', () => resolve());
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk;
      if (output.startsWith('ready\n')) resolve();
    });
    void exited.then(() => reject(new Error(`the ${kind} swapper exited before it started swapping: ${output}`)), reject);
  });
  const pid = child.pid!;
  return {
    kind,
    async pause() {
      child.kill('SIGSTOP');
      // The signal takes effect when the process next leaves the kernel, not when kill() returns.
      while (processState(pid) !== 'T') await new Promise((resolve) => setImmediate(resolve));
    },
    resume() {
      child.kill('SIGCONT');
    },
    async stop() {
      child.kill('SIGTERM');
      child.kill('SIGCONT');
      await exited;
      const [swaps, busy, other] = output.trim().split('\n').at(-1)!.split(' ').map(Number) as [number, number, number];
      return { swaps, busy, other };
    },
  };
}

/**
 * The mount namespace a BindMounter works in: its own process's, or another's, reached
 * through `/proc/<pid>/root` for paths and `nsenter` for commands.
 */
export interface Namespace {
  fsRoot: string;
  mountinfo: string;
  command(argv: string[]): string[];
}

export const OWN_NAMESPACE: Namespace = { fsRoot: '/', mountinfo: '/proc/self/mountinfo', command: (argv) => argv };

/** Process `pid`'s mount namespace, as `mount -N` reaches it. */
export function namespaceOfProcess(pid: number): Namespace {
  return {
    fsRoot: `/proc/${pid}/root`,
    mountinfo: `/proc/${pid}/mountinfo`,
    command: (argv) => ['nsenter', `--target=${pid}`, '--mount', '--', ...argv],
  };
}

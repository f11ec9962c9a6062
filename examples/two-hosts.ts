// Two "hosts" on one machine, for the cross-host examples and tests: two network
// namespaces joined by a veth pair (addresses exist only inside them), Debian's sshd
// running in host B's with keys made for the lab, and ssh options for host A to reach
// it. Needs root, iproute2, openssh-server, openssh-client and rsync.
//
// Each process started with `onA`/`onB` runs under `ip netns exec`, which also gives it
// a mount namespace of its own (a copy of ours, made a slave of it).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type Options, type ResultPromise } from 'execa';

const ADDRESS_A = '10.77.0.1';
const ADDRESS_B = '10.77.0.2';
const SSH_PORT = 2222;

export interface HostB {
  address: string;
  /** Where B's processes keep their state: its state root, rootfs parent and incoming syncs. */
  root: string;
  rootfs: string;
  incoming: string;
}

export interface TwoHosts {
  dir: string;
  b: HostB;
  /** ssh arguments for host A's processes: the key for rsync, port, known-hosts file. */
  ssh: string[];
  /** The same, with the key B only accepts to run the receiving end (examples/receive.ts). */
  receiveSsh: string[];
  /** Runs `argv` in host A's network namespace. */
  onA(argv: readonly string[], options?: Options): ResultPromise;
  onB(argv: readonly string[], options?: Options): ResultPromise;
  /** Takes the link down (`up: false`) or back up: the network cut midway. */
  link(up: boolean): Promise<void>;
  /** Kills sshd and everything in both namespaces, then deletes them. */
  close(): Promise<void>;
}

/**
 * Makes the lab under `dir`. `receiveCommand` is what B runs for the receiving key
 * (its forced command); `bRoot` is B's state root (a small file system, for the
 * full-disk case) if not `<dir>/B/state`.
 */
export async function twoHosts(dir: string, receiveCommand: (b: HostB) => string[], bRoot?: string): Promise<TwoHosts> {
  const id = randomBytes(3).toString('hex');
  const [nsA, nsB, vethA, vethB] = [`cvA-${id}`, `cvB-${id}`, `cva${id}`, `cvb${id}`];
  const b: HostB = { address: ADDRESS_B, root: bRoot ?? path.join(dir, 'B', 'state'), rootfs: path.join(dir, 'B', 'rootfs'), incoming: path.join(dir, 'B', 'incoming') };
  const keys = path.join(dir, 'ssh');
  for (const d of [b.rootfs, b.incoming, keys, '/run/sshd']) await fs.mkdir(d, { recursive: true });
  let sshd: ResultPromise | undefined;
  const ip = (...args: string[]) => execa('ip', args, { stdin: 'ignore' });
  const close = async () => {
    sshd?.kill('SIGKILL');
    await sshd?.catch(() => undefined);
    for (const ns of [nsA, nsB]) {
      // ip netns del leaves a namespace alive while a process is in it: an sshd session, a receiver.
      const pids = await execa('ip', ['netns', 'pids', ns], { reject: false });
      for (const pid of String(pids.stdout).split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // Gone already.
        }
      }
      await execa('ip', ['netns', 'del', ns], { reject: false });
    }
  };
  try {
    await ip('netns', 'add', nsA);
    await ip('netns', 'add', nsB);
    await ip('link', 'add', vethA, 'type', 'veth', 'peer', 'name', vethB);
    await ip('link', 'set', vethA, 'netns', nsA);
    await ip('link', 'set', vethB, 'netns', nsB);
    await ip('-n', nsA, 'addr', 'add', `${ADDRESS_A}/24`, 'dev', vethA);
    await ip('-n', nsB, 'addr', 'add', `${ADDRESS_B}/24`, 'dev', vethB);
    for (const [ns, veth] of [[nsA, vethA], [nsB, vethB]] as const) {
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
      await ip('-n', ns, 'link', 'set', veth, 'up');
    }
    const keygen = (name: string) => execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', path.join(keys, name)], { stdin: 'ignore' });
    await Promise.all([keygen('host'), keygen('sync'), keygen('receive')]);
    const pub = async (name: string) => (await fs.readFile(path.join(keys, `${name}.pub`), 'utf8')).trim();
    // The receiving key can only run the receiving end; the sync key gets no pty, no forwarding.
    const forced = receiveCommand(b).map((arg) => arg.replace(/["\\]/g, '')).join(' ');
    await fs.writeFile(path.join(keys, 'authorized_keys'), `restrict,command="${forced}" ${await pub('receive')}\nrestrict ${await pub('sync')}\n`, { mode: 0o600 });
    await fs.writeFile(path.join(keys, 'known_hosts'), `[${ADDRESS_B}]:${SSH_PORT} ${(await pub('host')).split(' ').slice(0, 2).join(' ')}\n`);
    const config = [
      `ListenAddress ${ADDRESS_B}`,
      `Port ${SSH_PORT}`,
      `HostKey ${path.join(keys, 'host')}`,
      `AuthorizedKeysFile ${path.join(keys, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      // The lab's directories are under a temporary directory other users can list.
      'StrictModes no',
      'PidFile none',
      // A peer gone silent (the cut link) ends its session within seconds.
      'ClientAliveInterval 1',
      'ClientAliveCountMax 3',
      'LogLevel ERROR',
    ];
    await fs.writeFile(path.join(keys, 'sshd_config'), `${config.join('\n')}\n`);
    sshd = execa('ip', ['netns', 'exec', nsB, '/usr/sbin/sshd', '-D', '-e', '-f', path.join(keys, 'sshd_config')], { stdin: 'ignore', reject: false });
    await untilListening(nsB, SSH_PORT, sshd);
  } catch (error) {
    await close();
    throw error;
  }
  const common = ['-p', String(SSH_PORT), '-o', `UserKnownHostsFile=${path.join(keys, 'known_hosts')}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'ServerAliveInterval=1', '-o', 'ServerAliveCountMax=3', '-o', 'IdentitiesOnly=yes'];
  return {
    dir,
    b,
    ssh: ['-i', path.join(keys, 'sync'), ...common],
    receiveSsh: ['-i', path.join(keys, 'receive'), ...common],
    onA: (argv, options) => execa('ip', ['netns', 'exec', nsA, ...argv], options ?? {}),
    onB: (argv, options) => execa('ip', ['netns', 'exec', nsB, ...argv], options ?? {}),
    link: async (up) => {
      await ip('-n', nsA, 'link', 'set', vethA, up ? 'up' : 'down');
    },
    close,
  };
}

/** Waits until a socket listens on `port` in `ns` (its /proc/net/tcp, read from inside). */
async function untilListening(ns: string, port: number, sshd: ResultPromise): Promise<void> {
  let exited = false;
  void sshd.finally(() => (exited = true));
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (let i = 0; i < 500; i++) {
    if (exited) throw new Error(`sshd exited: ${String((await sshd).stderr)}`);
    const tcp = await execa('ip', ['netns', 'exec', ns, 'cat', '/proc/net/tcp'], { reject: false });
    if (new RegExp(`^\\s*\\d+: [0-9A-F]+:${hexPort} 00000000:0000 0A `, 'm').test(String(tcp.stdout))) return;
    await sleep(20);
  }
  throw new Error(`sshd does not listen on port ${port} after 10 s`);
}

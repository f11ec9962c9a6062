import { execa } from 'execa';

/**
 * The kernel refuses a path of PATH_MAX (4,096) bytes or more, NUL included, and GNU
 * tar extracts each member by its whole name relative to its -C directory. A member
 * this long fails ("File name too long") though its tree is legal at any depth.
 */
export const PATH_MAX = 4096;

/**
 * How much of a deep name one `-C` step takes. GNU tar opens each relative -C
 * directory relative to the previous one, so a chain of steps below PATH_MAX reaches
 * any depth; a step of at most half of it leaves room for the rest of the name.
 */
const STEP = PATH_MAX / 2;

/** One tar run for the deep members below one chain of directories. */
export interface DeepGroup {
  /** The -C steps from the extraction directory, each a run of whole components. */
  steps: string[];
  /** How many leading components the steps hold: tar strips them off the names (and hard link targets). */
  strip: number;
  /** The members' names exactly as archived. */
  members: Buffer[];
  /** The directories among them: a later run writes into some, so their times are set again at the end. */
  directories: Buffer[];
}

export interface DeepPlan {
  groups: DeepGroup[];
  /** Directories short enough for one run whose children are deep: the deep runs change their times. */
  parents: Buffer[];
}

interface Listed {
  type: string;
  /** Every name the line may mean (a symlink's line is ambiguous when its name holds " -> "). */
  names: Buffer[];
  linkTarget?: Buffer;
}

/**
 * Whether a failed extraction failed only because names were too long: every line of
 * tar's stderr but the last says so. Anything else is a real failure.
 */
export function failedOnlyOnLongNames(stderr: string): boolean {
  const lines = stderr.split('\n').filter((line) => line.trim() !== '' && !/^tar: Exiting with failure status/.test(line));
  return lines.length > 0 && lines.every((line) => line.endsWith(': File name too long'));
}

/**
 * Plans the extraction of the members whose names are too long for one tar run: the
 * archive is listed (tar skips the data of a seekable file, so this reads the headers
 * only), and the deep members are grouped by the chain of -C steps that reaches them,
 * shallower chains first (their members are the directories deeper chains go through).
 * `refuse` makes the error for an archive this cannot restore faithfully.
 */
export async function planDeepMembers(archive: string, refuse: (why: string) => Error): Promise<DeepPlan> {
  const listing = await execa('tar', ['--list', '--verbose', '--numeric-owner', '--quoting-style=escape', `--file=${archive}`], {
    stdin: 'ignore',
    env: { LC_ALL: 'C' },
    maxBuffer: 1024 * 1024 * 1024,
  });
  const entries = String(listing.stdout).split('\n').filter(Boolean).map(parseLine);
  // tar follows a symlink met on a -C step: every step must be a directory in the archive, never anything else.
  const notDirectories = new Set<string>();
  for (const entry of entries) if (entry.type !== 'd') for (const name of entry.names) notDirectories.add(normalize(name).toString('latin1'));
  const groups = new Map<string, DeepGroup>();
  const deepParents = new Set<string>();
  for (const entry of entries) {
    const name = entry.names[0]!;
    const target = entry.linkTarget;
    if (name.length < PATH_MAX) {
      if (target && target.length >= PATH_MAX) throw refuse(`${show(name)} is a hard link to a file whose path is longer than ${PATH_MAX} bytes`);
      continue;
    }
    const components = splitComponents(normalize(name));
    const chunks = chunk(components);
    const stepComponents = chunks.slice(0, -1);
    const flat = stepComponents.flat();
    for (let i = 1; i <= flat.length; i++) {
      if (notDirectories.has(Buffer.from(join(flat.slice(0, i))).toString('latin1'))) throw refuse(`${show(join(flat.slice(0, i)))} is not a directory, but deeper members are below it`);
    }
    if (target && !startsWithComponents(splitComponents(normalize(target)), flat)) {
      throw refuse(`${show(name)} is a hard link to ${show(target)}, outside the directory tar extracts it from`);
    }
    const steps = stepComponents.map((c) => {
      const bytes = join(c);
      const text = bytes.toString('utf8');
      // A -C step is a command-line argument, a string: bytes that are not UTF-8 cannot be one.
      if (!Buffer.from(text, 'utf8').equals(bytes)) throw refuse(`${show(name)} is longer than ${PATH_MAX} bytes and its directories' names are not UTF-8`);
      return text;
    });
    const key = steps.join('\0');
    let group = groups.get(key);
    if (!group) groups.set(key, (group = { steps, strip: flat.length, members: [], directories: [] }));
    group.members.push(name);
    if (entry.type === 'd') group.directories.push(name);
    deepParents.add(join(components.slice(0, -1)).toString('latin1'));
  }
  const parents = entries
    .filter((e) => e.type === 'd' && e.names[0]!.length < PATH_MAX && deepParents.has(normalize(e.names[0]!).toString('latin1')))
    .map((e) => e.names[0]!);
  return { groups: [...groups.values()].sort((a, b) => a.steps.length - b.steps.length), parents };
}

/** The runs of whole components, each at most STEP bytes with its slashes. */
function chunk(components: Buffer[]): Buffer[][] {
  const chunks: Buffer[][] = [[]];
  let size = 0;
  for (const component of components) {
    if (size + component.length + 1 > STEP && chunks.at(-1)!.length > 0) {
      chunks.push([]);
      size = 0;
    }
    chunks.at(-1)!.push(component);
    size += component.length + 1;
  }
  return chunks;
}

function parseLine(line: string): Listed {
  // type+mode, uid/gid, size (or major,minor), date, time, then the name.
  const match = /^(\S)\S*\s+\S+\s+\S+\s+\S+\s+\S+ (.*)$/.exec(line);
  if (!match) return { type: '?', names: [unescape(line)] };
  const [, type, rest] = match as unknown as [string, string, string];
  if (type === 'h') {
    const at = rest.indexOf(' link to ');
    return { type, names: [unescape(rest.slice(0, at))], linkTarget: unescape(rest.slice(at + ' link to '.length)) };
  }
  if (type === 'l') {
    // tar escapes no space: the name is one of the prefixes before a " -> ".
    const names: Buffer[] = [];
    for (let at = rest.indexOf(' -> '); at >= 0; at = rest.indexOf(' -> ', at + 1)) names.push(unescape(rest.slice(0, at)));
    return { type, names: names.length > 0 ? names : [unescape(rest)] };
  }
  return { type, names: [unescape(rest)] };
}

const ESCAPES: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 92, '?': 63, '"': 34, "'": 39, ' ': 32 };

/** tar's `escape` quoting back to the name's bytes: \ooo octal and C escapes. */
function unescape(text: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const char = text[i]!;
    if (char !== '\\' || i + 1 >= text.length) {
      bytes.push(...Buffer.from(char, 'latin1'));
      continue;
    }
    const octal = /^[0-7]{3}/.exec(text.slice(i + 1, i + 4));
    if (octal) {
      bytes.push(parseInt(octal[0], 8));
      i += 3;
    } else {
      bytes.push(ESCAPES[text[i + 1]!] ?? text.charCodeAt(i + 1));
      i += 1;
    }
  }
  return Buffer.from(bytes);
}

function splitComponents(name: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= name.length; i++) {
    if (i === name.length || name[i] === 0x2f) {
      if (i > start) out.push(name.subarray(start, i));
      start = i + 1;
    }
  }
  return out;
}

/** A name as the kernel walks it: no empty or `.` components, no trailing slash. */
function normalize(name: Buffer): Buffer {
  return join(splitComponents(name).filter((c) => !(c.length === 1 && c[0] === 0x2e)));
}

function join(components: Buffer[]): Buffer {
  return Buffer.concat(components.flatMap((c, i) => (i === 0 ? [c] : [Buffer.from('/'), c])));
}

function startsWithComponents(name: Buffer[], prefix: Buffer[]): boolean {
  return name.length > prefix.length && prefix.every((c, i) => c.equals(name[i]!));
}

/** A long name, shortened for a message. */
function show(name: Buffer): string {
  const text = name.toString('utf8');
  return text.length > 120 ? `${text.slice(0, 50)}…${text.slice(-50)} (${name.length} bytes)` : text;
}

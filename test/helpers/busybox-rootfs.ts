import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/** Where Debian's busybox-static package installs it. */
export const DEBIAN_BUSYBOX = '/bin/busybox';

const PT_INTERP = 3;

/**
 * Whether `file` is an ELF executable with no program interpreter (PT_INTERP), i.e.
 * one that runs in a rootfs without a dynamic loader or libc. Reads the ELF header
 * itself: `file(1)` is not on a minimal Debian, and the non-static `busybox` package
 * installs the same /bin/busybox path as busybox-static.
 */
export async function isStaticElf(file: string): Promise<boolean> {
  const bytes = await fs.readFile(file);
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46) return false;
  const is64 = bytes[4] === 2;
  const little = bytes[5] === 1;
  const u16 = (at: number) => (little ? bytes.readUInt16LE(at) : bytes.readUInt16BE(at));
  const u32 = (at: number) => (little ? bytes.readUInt32LE(at) : bytes.readUInt32BE(at));
  const phoff = is64 ? Number(little ? bytes.readBigUInt64LE(0x20) : bytes.readBigUInt64BE(0x20)) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  if (phnum === 0 || phoff + phnum * phentsize > bytes.length) return false;
  for (let i = 0; i < phnum; i++) {
    if (u32(phoff + i * phentsize) === PT_INTERP) return false;
  }
  return true;
}

/**
 * Makes `<dir>` a minimal root filesystem: a static busybox at /bin/busybox and a
 * symlink in /bin for each applet it lists (sh, cat, ls, touch…). Returns `dir`.
 */
export async function busyboxRootfs(dir: string, busybox = DEBIAN_BUSYBOX): Promise<string> {
  const installHint = 'install Debian\'s busybox-static (apt-get install busybox-static)';
  try {
    await fs.access(busybox, fs.constants.X_OK);
  } catch {
    throw new Error(`no busybox at ${busybox}: ${installHint}`);
  }
  if (!(await isStaticElf(busybox))) {
    throw new Error(`${busybox} is not a statically linked executable (the dynamic busybox package?): ${installHint}`);
  }
  const bin = path.join(dir, 'bin');
  await fs.mkdir(bin, { recursive: true });
  await fs.copyFile(busybox, path.join(bin, 'busybox'));
  await fs.chmod(path.join(bin, 'busybox'), 0o755);
  const { stdout } = await execa(busybox, ['--list']);
  const applets = stdout.split('\n').filter((name) => name !== '' && name !== 'busybox' && !name.includes('/'));
  await Promise.all(applets.map((name) => fs.symlink('busybox', path.join(bin, name))));
  return dir;
}

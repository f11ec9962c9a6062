import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { BindMounter, ContainerRuntime } from '../../src/index.js';
import { cleanupTemp, NOTHING_RECOVERED, tempDir } from '../helpers/fixtures.js';
import { mountsUnder, unmountAllUnder } from '../helpers/mounts.js';
import { assertPrivateMountNamespace } from './guard.js';

/*
 * A reboot, as the library sees it: every mount is gone and the kernel's boot id is
 * new. The test detaches the mounts and bind-mounts a file with a new id over
 * /proc/sys/kernel/random/boot_id (inside the suite's private mount namespace), then
 * plays the restarted orchestrator in a fresh process, which reads the new id.
 */

const BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';
const dist = fileURLToPath(new URL('../../dist/index.js', import.meta.url));

let base: string;
beforeAll(async () => {
  assertPrivateMountNamespace();
  base = await tempDir('reboot-');
});
afterAll(async () => {
  if (base) unmountAllUnder(base);
  await cleanupTemp();
});

/** Runs `body` (an async function body given `runtime`) in a new process, as the restarted orchestrator; resolves to what it returns. */
function afterReboot(root: string, body: string): unknown {
  const script = `
    const { ContainerRuntime, BindMounter } = await import(${JSON.stringify(dist)});
    const runtime = new ContainerRuntime({ root: ${JSON.stringify(root)}, mounter: new BindMounter() });
    const result = await (async () => { ${body} })();
    process.stdout.write(JSON.stringify(result));`;
  return JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }));
}

describe('after a reboot', () => {
  test('mount() of a container still marked mounted records the new boot, so a later recover() leaves its live mounts alone', async () => {
    const dir = fs.mkdtempSync(path.join(base, 'w-'));
    const root = path.join(dir, 'state');
    const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });
    const rootfs = path.join(dir, 'c1');
    fs.mkdirSync(rootfs);
    const c1 = await runtime.create({ rootfs, volumes: ['/data'] });
    await runtime.mount(c1.id);
    const volume = path.join(root, 'volumes', c1.volumes[0]!.volumeId);

    // The reboot: no mount survives, and the boot id changes.
    unmountAllUnder(dir);
    const newBoot = randomUUID();
    const bootFile = path.join(dir, 'boot_id');
    fs.writeFileSync(bootFile, `${newBoot}\n`);
    execFileSync('mount', ['--bind', bootFile, BOOT_ID_FILE]);
    try {
      // The orchestrator starts the container again (mount is idempotent), then, later, recovers.
      const mounted = afterReboot(root, `return (await runtime.mount(${JSON.stringify(c1.id)})).mounted;`);
      expect(mounted).toBe(true);
      expect(mountsUnder(rootfs).map((m) => m.root)).toEqual([volume]);
      fs.writeFileSync(path.join(rootfs, 'data/log'), 'written by the running container\n');

      const report = afterReboot(root, 'return await runtime.recover();');
      expect(report).toEqual(NOTHING_RECOVERED);
      expect(mountsUnder(rootfs).map((m) => m.root)).toEqual([volume]);
      expect(afterReboot(root, `return (await runtime.get(${JSON.stringify(c1.id)})).mounted;`)).toBe(true);
      const config = JSON.parse(fs.readFileSync(path.join(root, 'containers', `${c1.id}.json`), 'utf8')) as { mountedInBoot?: string };
      expect(config.mountedInBoot).toBe(newBoot);
      // The application's writes went into the volume, not into the bare rootfs directory.
      expect(fs.readFileSync(path.join(volume, 'log'), 'utf8')).toBe('written by the running container\n');
    } finally {
      execFileSync('umount', [BOOT_ID_FILE]);
    }
  });
});

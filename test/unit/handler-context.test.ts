import { afterAll, describe, expect, test } from '@jest/globals';
import { cleanupTemp, sandbox } from '../helpers/fixtures.js';

afterAll(cleanupTemp);

describe('what a function handler is given', () => {
  test('the handler container as a ContainerInfo copy: no internal fields, and changing it changes nothing', async () => {
    const { runtime, rootfs } = await sandbox();
    const db = await runtime.create({ rootfs: await rootfs('db'), volumes: ['/data'] });
    const seen = await runtime.runHandler(db.id, async ({ container, volumes }) => {
      const keys = Object.keys(container).sort();
      container.volumes.length = 0;
      (container as { rootfs: string }).rootfs = '/elsewhere';
      return { keys, paths: volumes.map((v) => v.path), id: container.id };
    });
    expect(seen.keys).not.toContain('version');
    expect(seen.keys).not.toContain('mountedIn');
    expect(seen.keys).toEqual(expect.arrayContaining(['id', 'rootfs', 'volumes', 'mounted', 'createdAt']));
    expect(seen.paths).toEqual(['/data']);
    // The target is as it was; the handler container is gone once the handler returns.
    expect((await runtime.get(db.id)).volumes.map((v) => v.path)).toEqual(['/data']);
    expect((await runtime.list()).map((c) => c.id)).toEqual([db.id]);
  });
});

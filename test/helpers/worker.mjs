// What every worker process of the tests shares: loading the BUILT package (dist/), as
// another process of an application would, and a seeded random generator.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The built package, or exit code 2 with a message naming `worker` when it is not built. */
export async function loadDist(worker) {
  const distUrl = new URL('../../dist/index.js', import.meta.url);
  if (!fs.existsSync(fileURLToPath(distUrl))) {
    process.stderr.write(`${worker}: ${fileURLToPath(distUrl)} is missing: build the package first with \`npx tsup\`\n`);
    process.exit(2);
  }
  return import(distUrl.href);
}

/** mulberry32: a small seeded generator, so that a failing run can be replayed from its seed. */
export function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

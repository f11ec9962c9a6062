#!/usr/bin/env node
// A process that starts a handler on a store and is then killed, for the crash cases of
// test/real/handlers.test.ts. It uses the BUILT package (dist/), as an orchestrator would.
//
//   node handler-worker.mjs <root> <containerId> function
//   node handler-worker.mjs <root> <containerId> command <rootfs> <argv…>
//
// Prints {"op":"running","container":<handler container id>} once a function handler
// runs (a command handler cannot tell when its command has started: the harness watches
// for the process instead), then never finishes on its own.
import { loadDist } from './worker.mjs';

const { BindMounter, ContainerRuntime } = await loadDist('handler-worker');

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const [root, containerId, kind, rootfs, ...argv] = process.argv.slice(2);
const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });

// A pending promise alone does not keep Node alive.
setInterval(() => undefined, 60_000);

if (kind === 'function') {
  await runtime.runHandler(containerId, ({ container }) => {
    print({ op: 'running', container: container.id });
    return new Promise(() => undefined);
  });
} else {
  print({ op: 'starting' });
  const result = await runtime.runHandler(containerId, { command: argv, rootfs });
  print({ op: 'finished', result });
}

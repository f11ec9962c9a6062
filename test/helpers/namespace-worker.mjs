#!/usr/bin/env node
// A process of an application in a mount namespace of its own, for test/real/namespaces.test.ts.
// Started as `unshare -m --propagation private -- node namespace-worker.mjs <root>`, it uses
// the BUILT package with real bind mounts, reads one JSON command per line on stdin and
// answers each with one JSON line: { result } or { error: { code, message } }.
//
//   { "op": "create", "spec": {…} }           runtime.create(spec)
//   { "op": "mount" | "unmount", "id": … }    runtime.mount / runtime.unmount
//   { "op": "remove", "id": …, "options": {…} }
//   { "op": "recover" }
//   { "op": "read", "file": … }                a file's content as this namespace sees it
//   { "op": "write", "file": …, "data": … }
//   { "op": "hold" }                           starts a `sleep` that stays in this namespace after we exit; answers its pid
//   { "op": "exit" }
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import readline from 'node:readline';
import { loadDist } from './worker.mjs';

const { ContainerRuntime, BindMounter } = await loadDist('namespace-worker');
const runtime = new ContainerRuntime({ root: process.argv[2], mounter: new BindMounter() });

const operations = {
  create: ({ spec }) => runtime.create(spec),
  mount: ({ id }) => runtime.mount(id),
  unmount: ({ id }) => runtime.unmount(id),
  remove: ({ id, options }) => runtime.remove(id, options),
  recover: () => runtime.recover(),
  read: ({ file }) => fs.readFileSync(file, 'utf8'),
  write: ({ file, data }) => fs.writeFileSync(file, data),
  hold: () => {
    const sleeper = spawn('sleep', ['1000'], { detached: true, stdio: 'ignore' });
    sleeper.unref();
    return sleeper.pid;
  },
  exit: () => setImmediate(() => process.exit(0)),
};

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
print({ ready: fs.readlinkSync('/proc/self/ns/mnt') });
for await (const line of readline.createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  try {
    print({ result: (await operations[command.op](command)) ?? null });
  } catch (error) {
    print({ error: { code: error.code, message: error.message } });
  }
}

#!/usr/bin/env node
// Host A's side of test/real/two-hosts.test.ts, run in A's network namespace (so it
// reaches host B only over the veth link). Uses the BUILT package (dist/).
//
//   node host-a-worker.mjs backup <root> <containerId> <ssh args as JSON> <user@host> [pause-bytes go-file]
//   node host-a-worker.mjs sync <root> <containerId> <destination> <ssh args as JSON>
//
// Prints one JSON line: what the call resolved to, or its error's code and message, and
// how long it took (ms; for backup, until ssh exited: B's restore included). With
// pause-bytes, the backup stream stops after that many bytes, prints {"paused":true},
// and goes on once go-file exists (the harness cuts the link meanwhile).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadDist } from './worker.mjs';

const { BindMounter, ContainerRuntime } = await loadDist('host-a-worker');
const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const failure = (error) => ({ code: error.code, message: error.message, exitCode: error.exitCode });
const [op, root, containerId, ...rest] = process.argv.slice(2);
const runtime = new ContainerRuntime({ root, mounter: new BindMounter() });

if (op === 'backup') {
  const [sshArgs, target, pauseBytes, goFile] = rest;
  const ssh = spawn('ssh', [...JSON.parse(sshArgs), target], { stdio: ['pipe', 'pipe', 'pipe'] });
  ssh.stdin.on('error', () => undefined);
  let stdout = '';
  let stderr = '';
  ssh.stdout.on('data', (c) => (stdout += c));
  ssh.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise((resolve) => ssh.on('close', (code) => resolve(code)));
  let sent = 0;
  let paused = false;
  const gate = new Transform({
    async transform(chunk, _encoding, callback) {
      sent += chunk.length;
      if (pauseBytes && !paused && sent > Number(pauseBytes)) {
        paused = true;
        print({ paused: true });
        while (!fs.existsSync(goFile)) await sleep(20);
      }
      callback(null, chunk);
    },
  });
  gate.pipe(ssh.stdin);
  gate.on('error', () => undefined);
  ssh.stdin.on('close', () => gate.destroy());
  const started = performance.now();
  const backup = await runtime.backup(containerId, gate).then((r) => ({ ok: true, bytes: sent, warnings: r.warnings }), failure);
  const exitCode = await exited;
  const ms = performance.now() - started;
  let received;
  try {
    received = JSON.parse(stdout.trim().split('\n').at(-1));
  } catch {
    received = { raw: stdout };
  }
  print({ backup, ssh: { exitCode, stderr: stderr.slice(-500) }, received, ms });
} else if (op === 'sync') {
  const [destination, sshArgs] = rest;
  const started = performance.now();
  const result = await runtime.sync(containerId, destination, { ssh: JSON.parse(sshArgs) }).then((r) => ({ ok: true, ...r }), failure);
  print({ ...result, ms: performance.now() - started });
} else {
  throw new Error(`unknown op ${op}`);
}

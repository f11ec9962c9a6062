#!/usr/bin/env node
// What users get from npm, checked on the packed file list (the build must have run):
// no text in the package cites a document it does not hold (the product's design notes,
// the project's issue tracker), and every relative link in its Markdown leads to a file
// that is in it. Exit 1 with each offence on its own line.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const packed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { encoding: 'utf8' }));
const files = new Set(packed[0].files.map((f) => f.path));
if (![...files].some((f) => f.startsWith('dist/'))) {
  console.error('package check: no dist/ in the package: build first');
  process.exit(1);
}

/** Citations of documents outside the package: design notes by name, section marks, issue numbers. */
const CITATIONS = [/\bSPEC\b/, /\bseed §/i, /\bthe seed\b/i, /MOUNTING\.md/, /\bissue #?\d+/i, /§\s?\d/];
const offences = [];
for (const file of files) {
  if (!/\.(md|js|cjs|d\.ts|d\.cts|json)$/.test(file)) continue;
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  lines.forEach((line, i) => {
    for (const pattern of CITATIONS) if (pattern.test(line)) offences.push(`${file}:${i + 1}: cites ${pattern}: ${line.trim().slice(0, 120)}`);
  });
  if (!file.endsWith('.md')) continue;
  lines.forEach((line, i) => {
    for (const [, target] of line.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/i.test(target) || target.startsWith('#')) continue;
      const linked = path.posix.normalize(path.posix.join(path.posix.dirname(file), target.split('#')[0]));
      const isDir = [...files].some((f) => f.startsWith(`${linked}/`));
      if (!files.has(linked) && !isDir) offences.push(`${file}:${i + 1}: links ${target}, which is not in the package`);
    }
  });
}
for (const offence of offences) console.error(offence);
console.log(`package check: ${files.size} files, ${offences.length} offence(s)`);
process.exit(offences.length === 0 ? 0 : 1);

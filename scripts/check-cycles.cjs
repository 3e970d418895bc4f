#!/usr/bin/env node
/**
 * Fails when files import each other in a circle. For the TypeScript layer (ts/): every relative
 * `import`, `import type` and `export ... from` is an edge between files. For the Rust crates
 * (crates/promptclip-core/src, src/): every `crate::a::b` and `super::x` path names the module
 * file it reaches, and each is an edge (a `mod.rs` that declares its children is not one: only
 * what it uses of them is; a file's `#[cfg(test)] mod` at its end is left out).
 *   node scripts/check-cycles.cjs [root]     (exits 1 and prints each circle found; root: the
 *                                            repository, by default this script's)
 */
const { readdirSync, readFileSync, statSync, existsSync } = require('node:fs')
const { join, dirname, resolve, relative } = require('node:path')

const ROOT = resolve(process.argv[2] ?? join(__dirname, '..'))

function files(dir, ext) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) return files(path, ext)
    return path.endsWith(ext) ? [path] : []
  })
}

/** Every circle of `graph` (file -> files it imports), each once, as a list of files. */
function circles(graph) {
  const found = new Map()
  const state = new Map() // 1: on the stack, 2: done
  const stack = []
  const visit = (f) => {
    state.set(f, 1)
    stack.push(f)
    for (const g of graph.get(f) ?? []) {
      if (state.get(g) === 1) {
        const cycle = stack.slice(stack.indexOf(g))
        const key = [...cycle].sort().join(' ')
        if (!found.has(key)) found.set(key, cycle)
      } else if (!state.has(g)) {
        visit(g)
      }
    }
    stack.pop()
    state.set(f, 2)
  }
  for (const f of [...graph.keys()].sort()) if (!state.has(f)) visit(f)
  return [...found.values()]
}

function typescriptGraph(dir) {
  const graph = new Map()
  for (const file of files(dir, '.ts')) {
    const text = readFileSync(file, 'utf8')
    const edges = new Set()
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;'"]*?from\s+'(\.[^']+)'/g)) {
      const base = resolve(dirname(file), m[1])
      const target = [`${base}.ts`, join(base, 'index.ts')].find(existsSync)
      if (target && target !== file) edges.add(target)
    }
    graph.set(file, edges)
  }
  return graph
}

/** The module file of `segments` under `src` (a.rs or a/mod.rs), for the longest prefix that is one. */
function rustModule(src, segments) {
  for (let n = segments.length; n > 0; n--) {
    const base = join(src, ...segments.slice(0, n))
    for (const f of [`${base}.rs`, join(base, 'mod.rs')]) if (existsSync(f)) return f
  }
  return null
}

function rustGraph(src) {
  const graph = new Map()
  for (const file of files(src, '.rs')) {
    const rel = relative(src, file).replace(/\.rs$/, '').split('/')
    if (rel.at(-1) === 'mod') rel.pop()
    // The module path of this file, and of its parent (for `super::`).
    const here = rel[0] === 'lib' || rel[0] === 'main' ? [] : rel
    // A test module (by convention last in its file) may use what its file's module sits under
    // (the kernels' tests compare against clip::nn's reference ops): not a dependency of the code.
    const text = readFileSync(file, 'utf8')
      .split(/#\[cfg\(test\)\]\s*mod\s+\w+/)[0]
      .replace(/\/\/[^\n]*/g, '')
      .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    const edges = new Set()
    const add = (segments) => {
      const target = rustModule(src, segments)
      if (target && target !== file) edges.add(target)
    }
    // Paths, and the names inside a brace group right after them: `crate::{a, b::c}`.
    for (const m of text.matchAll(/\b(crate|super)((?:::\w+)*)(?:::\{([^}]*)\})?/g)) {
      const rest = m[2].split('::').filter(Boolean)
      let prefix = m[1] === 'crate' ? [] : here.slice(0, -1)
      // `super::super::x`: one level up per `super`.
      while (rest[0] === 'super') {
        rest.shift()
        prefix = prefix.slice(0, -1)
      }
      const path = [...prefix, ...rest]
      if (m[3] !== undefined) {
        for (const item of m[3].split(',')) {
          const names = item
            .trim()
            .split('::')
            .filter((s) => /^\w+$/.test(s))
          if (names.length > 0 && names[0] !== 'self') add([...path, ...names])
          else add(path)
        }
      } else {
        add(path)
      }
    }
    graph.set(file, edges)
  }
  return graph
}

const checks = [
  ['ts', typescriptGraph],
  ['crates/promptclip-core/src', rustGraph],
  ['src', rustGraph],
]
  .filter(([dir]) => existsSync(join(ROOT, dir)))
  .map(([dir, graph]) => [dir, graph(join(ROOT, dir))])
let failed = false
for (const [name, graph] of checks) {
  const found = circles(graph)
  for (const c of found) {
    failed = true
    console.error(`circle in ${name}: ${[...c, c[0]].map((f) => relative(ROOT, f)).join(' -> ')}`)
  }
  if (found.length === 0) console.log(`${name}: no import circle among ${graph.size} files`)
}
process.exit(failed ? 1 : 0)

/**
 * The layout's one rule that a check enforces: no files import each other in a circle, in the
 * TypeScript layer or the Rust crates (scripts/check-cycles.cjs, run by `npm run lint`).
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import test from 'ava'

const SCRIPT = join(import.meta.dirname ?? __dirname, '..', 'scripts', 'check-cycles.cjs')
const check = (root?: string) => spawnSync(process.execPath, root ? [SCRIPT, root] : [SCRIPT], { encoding: 'utf8' })

function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'promptclip-layout-'))
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true })
    writeFileSync(join(root, path), text)
  }
  return root
}

test('the repository has no import circle', (t) => {
  const r = check()
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /ts: no import circle/)
  t.regex(r.stdout, /crates\/promptclip-core\/src: no import circle/)
})

test('a circle is found and named, in TypeScript (type imports too) and in Rust', (t) => {
  const ts = check(
    tree({
      'ts/a.ts': "import type { B } from './b'\nexport type A = B\n",
      'ts/b.ts': "import { c } from './sub'\nexport type B = number\n",
      'ts/sub/index.ts': "export { a } from '../a'\nexport const c = 1\n",
      'ts/leaf.ts': "import { c } from './sub'\n",
    }),
  )
  t.is(ts.status, 1)
  t.regex(ts.stderr, /circle in ts: ts\/a\.ts -> ts\/b\.ts -> ts\/sub\/index\.ts -> ts\/a\.ts/)
  t.notRegex(ts.stderr, /leaf/)
  const rust = check(
    tree({
      'src/lib.rs': 'mod a;\nmod b;\n',
      'src/a.rs': 'use crate::b::{self, inner::Thing};\n',
      'src/b/mod.rs': 'pub mod inner;\n',
      'src/b/inner.rs': 'use super::super::a::Other; // "crate::a" in words\n',
    }),
  )
  t.is(rust.status, 1)
  t.regex(rust.stderr, /circle in src: src\/a\.rs -> src\/b\/inner\.rs -> src\/a\.rs/)
  // A test module's uses are not the code's dependencies.
  const tests = check(
    tree({
      'src/a.rs': 'pub fn f() {}\n#[cfg(test)]\nmod tests { use crate::b::g; }\n',
      'src/b.rs': 'use crate::a::f;\n',
    }),
  )
  t.is(tests.status, 0, tests.stderr)
})

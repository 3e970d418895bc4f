/**
 * The built-in CLIP tells the papers' story: zero-shot CLIP far above chance but leaving room,
 * CoOp and CoCoOp above it on the base classes they learned, CoCoOp above CoOp on new classes.
 * Measured facts of the model that ships (models/builtin/), on the demo's protocol.
 */
import { existsSync } from 'node:fs'
import test from 'ava'
import { BUILTIN_MODEL, Clip } from 'promptclip'
import { formatTable, runDemo } from '../ts/demo'

test('the built-in CLIP loads from the package folder, whatever the working directory', async (t) => {
  t.true(existsSync(BUILTIN_MODEL), BUILTIN_MODEL)
  const clip = await Clip.load(BUILTIN_MODEL)
  t.like(clip.info, { imageSize: 28, patchSize: 4, naming: 'huggingface' })
  t.true(clip.info.logitScale > 90 && clip.info.logitScale < 110, `logit scale ${clip.info.logitScale}`)
})

test("on the built-in CLIP, base-to-new shows the papers' pattern (3 seeds)", async (t) => {
  const r = await runDemo({ seeds: [1, 2, 3], testPerClass: 50 })
  t.log(`\n${formatTable(r)}`)
  const mean = (xs: number[] | null) => (xs ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN)
  const m = (name: string) => {
    const row = r.methods.find((x) => x.name === name)
    if (!row) throw new Error(`no row ${name}`)
    return { base: mean(row.base), novel: mean(row.new) }
  }
  const zs = m('zero-shot')
  const coop = m('CoOp')
  const cocoop = m('CoCoOp')
  // Chance is 10% on each half of 10 classes.
  t.true(zs.base > 40 && zs.novel > 40, `zero-shot ${zs.base} / ${zs.novel}`)
  t.true(coop.base > zs.base, `CoOp base ${coop.base} vs zero-shot ${zs.base}`)
  t.true(cocoop.base > zs.base, `CoCoOp base ${cocoop.base} vs zero-shot ${zs.base}`)
  t.true(cocoop.novel > coop.novel, `CoCoOp new ${cocoop.novel} vs CoOp ${coop.novel}`)
  // Every method is in the table, the linear probe on base classes only.
  t.deepEqual(
    r.methods.map((x) => x.name),
    ['zero-shot', 'zero-shot (ensemble)', 'linear probe', 'CoOp', 'CoCoOp', 'KgCoOp'],
  )
  t.is(r.methods[2].new, null)
  t.is(r.contextWords.length, 4)
})

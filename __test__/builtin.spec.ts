/**
 * The built-in CLIP tells the papers' story: zero-shot CLIP far above chance but leaving room,
 * CoOp and CoCoOp above it on the base classes they learned, CoCoOp above CoOp on new classes.
 * Measured facts of the model that ships (models/builtin/), on the demo's protocol (a preset of
 * runProtocol's base-to-new, every method of the catalogue).
 *
 * PROMPTCLIP_DEMO_OUT names the folder of a `promptclip demo` run with the default settings made by
 * this same build (CI runs the README's demo just before the tests): the demo then reuses its
 * finished runs, each only while its config and data digests are the ones this call asks for, and
 * recomputes any other. Without it the demo runs in full in a temporary folder.
 */
import { existsSync } from 'node:fs'
import test from 'ava'
import { BUILTIN_MODEL, Clip } from 'promptclip'
import { formatTable, runDemo } from '../ts/demo'
import { methodEntry } from '../ts/methods'
import { methodTitle, protocolMethods, ZERO_SHOT_METHODS } from '../ts/protocols/plan'

test('the built-in CLIP loads from the package folder, whatever the working directory', async (t) => {
  t.true(existsSync(BUILTIN_MODEL), BUILTIN_MODEL)
  const clip = await Clip.load(BUILTIN_MODEL)
  t.like(clip.info, { imageSize: 28, patchSize: 4, naming: 'huggingface' })
  t.true(clip.info.logitScale > 90 && clip.info.logitScale < 110, `logit scale ${clip.info.logitScale}`)
})

test("on the built-in CLIP, base-to-new shows the papers' pattern (3 seeds)", async (t) => {
  const out = process.env.PROMPTCLIP_DEMO_OUT
  if (out !== undefined) t.log(`the demo's runs in ${out}, reused where they match`)
  const r = await runDemo({ seeds: [1, 2, 3], testPerClass: 50, ...(out !== undefined ? { out } : {}) })
  t.log(`\n${formatTable(r)}`)
  t.log(`demo: ${r.seconds.toFixed(0)} s`)
  const mean = (xs: number[] | null) => (xs ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN)
  const m = (method: string) => {
    const row = r.methods.find((x) => x.method === method)
    if (!row) throw new Error(`no row ${method}`)
    return { base: mean(row.base), novel: mean(row.new) }
  }
  const zs = m('zero-shot')
  const coop = m('coop')
  const cocoop = m('cocoop')
  // Chance is 10% on each half of 10 classes.
  t.true(zs.base > 40 && zs.novel > 40, `zero-shot ${zs.base} / ${zs.novel}`)
  t.true(coop.base > zs.base, `CoOp base ${coop.base} vs zero-shot ${zs.base}`)
  t.true(cocoop.base > zs.base, `CoCoOp base ${cocoop.base} vs zero-shot ${zs.base}`)
  t.true(cocoop.novel > coop.novel, `CoCoOp new ${cocoop.novel} vs CoOp ${coop.novel}`)
  // Every method of the catalogue has a row, in its order, under its title; those that score
  // only their own classes (the linear probe) on base classes only, the others on both halves.
  t.deepEqual(
    r.methods.map((x) => x.method),
    protocolMethods(),
  )
  t.deepEqual(
    r.methods.map((x) => x.name),
    protocolMethods().map((x) => methodTitle(x)),
  )
  for (const name of [
    'Zero-shot CLIP',
    'Prompt ensembling',
    'Linear probe',
    'CoOp',
    'CoCoOp',
    'KgCoOp',
    'CLIP-Adapter',
  ])
    t.true(
      r.methods.some((x) => x.name === name),
      name,
    )
  for (const row of r.methods) {
    const zeroShot = ZERO_SHOT_METHODS.includes(row.method)
    // The zero-shot baselines run once (their result does not depend on the seed), learners once a seed.
    t.is(row.base.length, zeroShot ? 1 : 3, row.name)
    if (!zeroShot && methodEntry(row.method).classes === 'own-classes') {
      t.is(row.new, null, row.name)
      t.is(row.h, null, row.name)
    } else {
      t.is(row.new?.length, row.base.length, row.name)
      t.is(row.h?.length, row.base.length, row.name)
    }
  }
  t.is(r.methods.find((x) => x.method === 'linear-probe')?.new, null)
  t.is(r.contextWords.length, 4)
  t.is(r.examples.length, 20)
  t.is(r.examplesBy, 'CoCoOp')
  t.deepEqual(
    r.perClass.map((p) => p.method),
    r.methods.map((x) => x.name),
  )
  for (const p of r.perClass) t.is(p.accuracy.length, 20)
})

/**
 * The method catalogue crosses from the core intact: the generated TypeScript (ts/generated/
 * methods.ts) is what the built addon's catalogue renders to now, every entry has the fields that
 * ts/methods.ts's `MethodEntry` declares with their types, the declarations have no `any` in
 * options or info, and what TypeScript does with a method (its flags, the protocols' list, the
 * titles, the recipe) comes from the entry, not from its name.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { Clip, methodCatalogue, methodRecipe, PromptLearner } from 'promptclip'
import { HF_MODEL } from './helpers'

const ROOT = join(__dirname, '..')

test('ts/generated/methods.ts is what the core catalogue renders to (not stale)', (t) => {
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'gen-methods.cjs'), '--check'], { encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
})

test('the native declarations have no `any` in options or info', (t) => {
  const dts = readFileSync(join(ROOT, 'index.d.ts'), 'utf8')
  const code = dts
    .split('\n')
    .filter((l) => !/^\s*(\/\*\*|\*)/.test(l))
    .join('\n')
  t.deepEqual(code.match(/\bany\b.*/g) ?? [], [])
})

test('every catalogue entry has the fields MethodEntry declares, with their types', (t) => {
  const entries = methodCatalogue()
  t.true(entries.length >= 4)
  const kinds = ['integer', 'number', 'boolean', 'string', 'string-list', 'integer-list', 'choice']
  for (const e of entries) {
    t.deepEqual(
      Object.keys(e).sort(),
      [
        'classes',
        'defaults',
        'fitting',
        'name',
        'options',
        'paper',
        'recipe',
        'seeded',
        'takes',
        'templateOption',
        'title',
        'usesValidation',
        'validationUnless',
      ],
      e.name,
    )
    t.regex(e.name, /^[a-z][a-z0-9-]*$/)
    t.true(e.title.length > 0 && e.paper.length > 0)
    t.true(['sgd', 'feature-fit'].includes(e.fitting), e.name)
    t.true(['any-classes', 'own-classes'].includes(e.classes), e.name)
    t.true(['image-features', 'images'].includes(e.takes), e.name)
    t.is(typeof e.usesValidation, 'boolean')
    for (const o of e.options) {
      t.true(kinds.includes(o.type), `${e.name}.${o.name}`)
      t.true(o.doc.length > 0, `${e.name}.${o.name} has a doc`)
      t.true(o.name in e.defaults, `${e.name}.${o.name} has a default (null: chosen later)`)
      if (o.flag !== null) t.regex(o.flag, /^--[a-z][a-z0-9-]*$/)
    }
    for (const name of [e.templateOption, ...e.validationUnless]) {
      if (name !== null)
        t.true(
          e.options.some((o) => o.name === name),
          `${e.name}: ${name} is one of its options`,
        )
    }
    t.is(e.seeded, 'seed' in e.defaults)
    t.true(e.recipe.epochs >= 1 && e.recipe.batchSize >= 1 && e.recipe.lr > 0)
  }
})

test("a learner's resolved options are its catalogue defaults, and its capabilities are its own", async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const classNames = ['dog', 'cat']
  for (const e of methodCatalogue()) {
    const learner = PromptLearner.create(clip, e.name, { classNames })
    for (const [name, d] of Object.entries(e.defaults)) {
      // Null defaults are chosen at creation (CoOp's nCtx from its words) or at fit time.
      if (d !== null) t.deepEqual(learner.info.options[name], d, `${e.name}.${name}`)
    }
    t.is(learner.scoresAnyClasses, e.classes === 'any-classes', e.name)
  }
  // Class-specific context scores its own classes only: the learner says so, not the method.
  const specific = PromptLearner.coop(clip, { classNames, classSpecific: true, nCtx: 2 })
  t.false(specific.scoresAnyClasses)
  t.false(PromptLearner.linearProbe(clip, { classNames }).capabilities.hasContext)
  t.true(specific.capabilities.hasContext)
})

test("CoOp's epochs by shots are the core's recipe, as the official scripts", (t) => {
  const epochs = (shots?: number, dataset?: string) => methodRecipe('coop', shots, dataset).epochs
  t.deepEqual(
    [1, 2, 4, 8, 16].map((s) => epochs(s, 'oxford_pets')),
    [50, 100, 100, 200, 200],
  )
  t.is(epochs(16, 'imagenet'), 50)
  t.is(epochs(), 50)
  const dassl = { optimizer: 'sgd', weightDecay: 5e-4, warmupEpochs: 1, lrPerStep: false, minLr: 0 }
  t.deepEqual(methodRecipe('cocoop', 16, 'oxford_pets'), { epochs: 10, batchSize: 1, lr: 0.002, ...dassl })
  // Tip-Adapter-F's is the official run_tip_adapter_F's: AdamW, cosine per batch, no warmup.
  const tipF = {
    batchSize: 256,
    lr: 0.001,
    optimizer: 'adamw',
    weightDecay: 0.01,
    warmupEpochs: 0,
    lrPerStep: true,
    minLr: 0,
  }
  t.deepEqual(methodRecipe('tip-adapter-f', 16, 'oxford_pets'), { epochs: 20, ...tipF })
  t.deepEqual(methodRecipe('tip-adapter-f', 16, 'eurosat'), { epochs: 100, ...tipF })
  // VPT-deep's is the official VPT/vit_b16_c2_ep5_batch4_4.yaml: 5 epochs at batch 4, lr 0.0025.
  t.deepEqual(methodRecipe('vpt', 16, 'oxford_pets'), { epochs: 5, batchSize: 4, lr: 0.0025, ...dassl })
  t.is(methodCatalogue().find((m) => m.name === 'vpt')?.takes, 'images')
  // CLIP-LoRA's is the official run_lora's: 500 x shots steps of AdamW, cosine per step to 1e-6.
  t.like(methodRecipe('clip-lora', 16, 'oxford_pets'), {
    batchSize: 32,
    lr: 2e-4,
    optimizer: 'adamw',
    weightDecay: 0.01,
    warmupEpochs: 0,
    lrPerStep: true,
    stepsPerShot: 500,
    minLr: 1e-6,
  })
  t.throws(() => methodRecipe('no-such-method', 1), { code: 'E_INVALID_ARGUMENT', message: /coop/ })
})

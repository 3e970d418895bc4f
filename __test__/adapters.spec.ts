/**
 * The feature adapters through the public API (their numbers against PyTorch are the core's
 * fixture tests, crates/promptclip-core/tests/{clip_adapter,tip_adapter}.rs): created by name
 * from the catalogue, fitted with a validation split, saved and loaded to the same predictions,
 * and what each says about class lists it was not fitted on.
 */
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, Evaluator, PromptLearner, Trainer } from 'promptclip'
import { CLASSES, dataset, HF_MODEL, present } from './helpers'

const tmp = () => mkdtempSync(join(tmpdir(), 'promptclip-adapters-'))

test('Tip-Adapter and Tip-Adapter-F: a cache fitted with alpha and beta chosen on validation, saved, own classes only', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const train = dataset(4, 61)
  const validation = dataset(2, 62)
  const heldOut = dataset(5, 63)
  const zeroShot = await new Evaluator(clip, { classNames: CLASSES }).evaluate(heldOut)
  for (const method of ['tip-adapter', 'tip-adapter-f'] as const) {
    const learner = PromptLearner.create(clip, method, { classNames: CLASSES, augmentPasses: 2 })
    t.deepEqual(learner.info.params, [], `${method}: no cache before a fit`)
    t.false(learner.scoresAnyClasses)
    await t.throwsAsync(new Trainer(learner, { epochs: 2 }).fit(train), {
      message: /searches alpha and beta on a validation set: pass one, or set both alpha and beta/,
    })
    const summary = await new Trainer(learner, { epochs: 3, batchSize: 8 }).fit(train, { validation })
    const details = present(summary.details)
    t.is(details.cacheSize, 16, method)
    t.true((details.validationAccuracy as number) >= 50, `${method}: ${JSON.stringify(details)}`)
    t.true(
      summary.fitted.some((line) => /searched on the validation split/.test(line)),
      summary.fitted.join('; '),
    )
    t.deepEqual(
      learner.info.params.map(([name]) => name),
      ['cacheKeys', 'cacheValues', 'alphaBeta'],
    )
    const ev = await new Evaluator(learner).evaluate(heldOut)
    t.log(`${method}: held-out accuracy ${ev.accuracy.toFixed(1)}% (zero-shot ${zeroShot.accuracy.toFixed(1)}%)`)
    t.true(ev.accuracy > zeroShot.accuracy, `${method}: ${ev.accuracy} vs zero-shot ${zeroShot.accuracy}`)
    const path = join(tmp(), `${method}.safetensors`)
    await learner.save(path)
    const loaded = await PromptLearner.load(clip, path)
    t.deepEqual(loaded.info, learner.info)
    const a = await learner.predict(heldOut.images)
    const b = await loaded.predict(heldOut.images)
    t.deepEqual(
      a.map((p) => Array.from(present(p.probabilities))),
      b.map((p) => Array.from(present(p.probabilities))),
    )
    await t.throwsAsync(loaded.predict(heldOut.images, { classNames: ['crimson', 'lime'] }), {
      message: /its cache holds only the few-shot images of those classes/,
    })
    t.false(loaded.capabilities.hasContext)
  }
})

import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, Evaluator, PromptclipError, PromptLearner, Trainer } from 'promptclip'
import { CLASSES, dataset, HF_MODEL, present } from './helpers'

test('CoCoOp: paper defaults, batched training, progress, new classes, save/load', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const learner = PromptLearner.cocoop(clip, { classNames: CLASSES.slice(0, 2), metaNetRatio: 4, seed: 3 })
  t.like(learner.info, {
    method: 'cocoop',
    nCtx: 4,
    promptPrefix: 'a photo of a',
    metaNetHidden: 4,
    classSpecific: false,
  })
  const all = dataset(6, 21)
  const base = { images: all.images.filter((_, i) => all.labels[i] < 2), labels: all.labels.filter((l) => l < 2) }
  const summary = await new Trainer(learner, { epochs: 15, batchSize: 6, lr: 0.1, augment: false, seed: 4 }).fit(base)
  t.true(present(summary.epochLoss.at(-1)) < 0.5 * summary.epochLoss[1], `loss ${summary.epochLoss.join(' ')}`)
  const ev = await new Evaluator(learner).evaluate(base)
  const zs = await new Evaluator(clip, { classNames: CLASSES.slice(0, 2) }).evaluate(base)
  t.log(`base accuracy: zero-shot ${zs.accuracy.toFixed(1)}% -> CoCoOp ${ev.accuracy.toFixed(1)}%`)
  t.true(ev.accuracy > zs.accuracy)

  // New class names: K prompts per image, reported batch by batch.
  const novel = {
    images: all.images.filter((_, i) => all.labels[i] >= 2),
    labels: all.labels.filter((l) => l >= 2).map((l) => l - 2),
  }
  const seen: number[] = []
  const preds = await learner.predict(novel.images, {
    classNames: CLASSES.slice(2),
    batchSize: 4,
    onProgress: (p) => seen.push(p.done),
  })
  t.true(preds.every((p) => p.probabilities?.length === 2))
  t.deepEqual(seen, [4, 8, 12]) // every event delivered before predict() resolved

  const path = join(mkdtempSync(join(tmpdir(), 'promptclip-')), 'cocoop.safetensors')
  await learner.save(path)
  const loaded = await PromptLearner.load(clip, path)
  t.deepEqual(loaded.info, learner.info)
  const again = await loaded.predict(novel.images.slice(0, 2), { classNames: CLASSES.slice(2) })
  t.deepEqual(Array.from(present(again[0].probabilities)), Array.from(present(preds[0].probabilities)))
})

test('CoCoOp refuses class-specific context and bad sizes', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  t.throws(() => PromptLearner.cocoop(clip, { classNames: CLASSES, classSpecific: true } as never), {
    instanceOf: PromptclipError,
    message: /CoOp-only/,
  })
  t.throws(() => PromptLearner.cocoop(clip, { classNames: CLASSES, metaNetRatio: 0 }), { message: /metaNetRatio/ })
})

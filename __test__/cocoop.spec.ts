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
    options: { nCtx: 4, ctxInit: 'a photo of a', metaNetRatio: 4, classSpecific: false, seed: 3 },
  })
  // The Meta-Net: 16-d features -> 16 / 4 = 4 hidden -> 32-d context shift.
  t.deepEqual(
    learner.info.params.map(([name, shape]) => `${name} ${shape.join('x')}`),
    ['ctx 4x32', 'meta.linear1.weight 4x16', 'meta.linear1.bias 4', 'meta.linear2.weight 32x4', 'meta.linear2.bias 32'],
  )
  const all = dataset(6, 21)
  const baseOf = (d: { images: unknown[]; labels: number[] }) => ({
    images: d.images.filter((_, i) => d.labels[i] < 2) as typeof all.images,
    labels: d.labels.filter((l) => l < 2),
  })
  const base = baseOf(all)
  const summary = await new Trainer(learner, { epochs: 15, batchSize: 6, lr: 0.1, augment: false, seed: 4 }).fit(base)
  t.true(present(summary.epochLoss.at(-1)) < 0.5 * summary.epochLoss[1], `loss ${summary.epochLoss.join(' ')}`)
  // Accuracy on held-out images of the base classes, not on the training images.
  const heldOut = baseOf(dataset(8, 777))
  const ev = await new Evaluator(learner).evaluate(heldOut)
  const zs = await new Evaluator(clip, { classNames: CLASSES.slice(0, 2) }).evaluate(heldOut)
  t.log(`held-out base accuracy: zero-shot ${zs.accuracy.toFixed(1)}% -> CoCoOp ${ev.accuracy.toFixed(1)}%`)
  t.is(ev.total, 16)
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
  const loaded = await PromptLearner.load(clip, path, { memoryBudgetMb: 1 })
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
  // The paper's defaults on the tiny CLIP: 16-d features / 16 = a Meta-Net 1 unit wide.
  const tiny = PromptLearner.cocoop(clip, { classNames: CLASSES })
  t.deepEqual(tiny.info.params[1], ['meta.linear1.weight', [1, 16]])
})

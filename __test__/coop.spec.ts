import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, Evaluator, PromptclipError, PromptLearner, Trainer, type TrainProgress } from 'promptclip'
import { CLASSES, dataset, HF_MODEL, OPENAI_MODEL, present } from './helpers'

test('CoOp trains from TypeScript: loss falls, held-out accuracy beats zero-shot, progress and metrics', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const train = dataset(8, 1)
  const test_ = dataset(5, 500)
  const zeroShot = await new Evaluator(clip, { classNames: CLASSES }).evaluate(test_)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 4, classSpecific: true, seed: 2 })
  t.like(learner.info, { method: 'coop', options: { nCtx: 4, classSpecific: true, position: 'end' } })
  t.deepEqual(learner.info.params, [['ctx', [4, 4, 32]]])
  const progress: TrainProgress[] = []
  const run = new Trainer(learner, { epochs: 30, batchSize: 8, lr: 0.01, augment: false, seed: 3 }).fit(train, {
    onProgress: (p) => progress.push(p),
  })
  // While the training task holds the learner, synchronous reads fail fast instead of blocking
  // the event loop.
  t.throws(() => learner.context(), { instanceOf: PromptclipError, code: 'E_BUSY' } as never)
  const summary = await run
  t.is(learner.context().length, 4 * 4 * 32)
  t.is(summary.epochLoss.length, 30)
  t.true(summary.epochLoss[29] < 0.5 * summary.epochLoss[1], `loss ${summary.epochLoss[1]} -> ${summary.epochLoss[29]}`)
  t.is(progress.length, 30 * 4) // every event delivered before fit() resolved
  t.deepEqual(
    Object.keys(progress[0]).sort(),
    ['epoch', 'epochAccuracy', 'epochLoss', 'epochs', 'globalStep', 'loss', 'lr', 'step', 'stepsPerEpoch'].sort(),
  )
  t.like(progress[0], { epoch: 1, step: 1, epochs: 30, globalStep: 1, lr: 1e-5 }) // warmup epoch, 1-based
  t.like(progress[4], { epoch: 2, step: 1, lr: 0.01 })
  t.like(present(progress.at(-1)), { epoch: 30, step: 4, globalStep: 120 })
  // Accuracies are percentages everywhere: the epoch's running accuracy equals the summary's.
  t.is(present(progress.at(-1)).epochAccuracy, present(summary.epochAccuracy.at(-1)))
  t.true(present(summary.epochAccuracy.at(-1)) > 1)
  const ev = await new Evaluator(learner, { topK: [1, 2] }).evaluate(test_)
  t.log(`held-out accuracy: zero-shot ${zeroShot.accuracy.toFixed(1)}% -> CoOp ${ev.accuracy.toFixed(1)}%`)
  t.true(ev.accuracy >= zeroShot.accuracy + 20)
  t.is(ev.total, 20)
  t.is(ev.perClass.length, 4)
  t.is(
    ev.confusion.flat().reduce((a, b) => a + b, 0),
    20,
  )
  t.true(Math.abs(ev.errorRate + ev.accuracy - 100) < 1e-9)
  t.deepEqual(
    ev.topK.map((x) => x.k),
    [1, 2],
  )
  const preds = await learner.predict(test_.images.slice(0, 3), { topK: 2 })
  t.is(preds[0].top.length, 2)
  t.true(CLASSES.includes(preds[0].top[0].label))
})

test('save, load, predict with new class names, interpret', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, ctxInit: 'a photo of a', position: 'middle' })
  t.like(learner.info.options, { nCtx: 4, ctxInit: 'a photo of a', position: 'middle' })
  const rows = await learner.interpret({ topK: 2 })
  t.deepEqual(
    rows.map((r) => r.tokens[0].token),
    ['a', 'photo', 'of', 'a'],
  )
  const path = join(mkdtempSync(join(tmpdir(), 'promptclip-')), 'prompt.safetensors')
  await learner.save(path)
  const loaded = await PromptLearner.load(clip, path)
  t.deepEqual(loaded.info, learner.info)
  t.deepEqual(Array.from(loaded.context()), Array.from(learner.context()))
  const images = dataset(1, 9).images
  const preds = await loaded.predict(images, { classNames: ['crimson', 'lime'], topK: 1 })
  t.true(preds.every((p) => p.probabilities?.length === 2))
  const other = await Clip.load(OPENAI_MODEL)
  await t.throwsAsync(PromptLearner.load(other, path), { instanceOf: PromptclipError, message: /text width/ })
})

test('cancel with an AbortSignal, then resume from the checkpoint', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(4, 3)
  const ckpt = join(mkdtempSync(join(tmpdir(), 'promptclip-')), 'run.ckpt')
  const options = { epochs: 3, batchSize: 8, augment: true, seed: 5, checkpointPath: ckpt }
  const full = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await new Trainer(full, options).fit(data)

  const interrupted = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const ac = new AbortController()
  const err = await t.throwsAsync(
    new Trainer(interrupted, options).fit(data, { signal: ac.signal, onProgress: (p) => p.epoch === 2 && ac.abort() }),
    { instanceOf: PromptclipError },
  )
  t.is(err?.code, 'E_CANCELLED')
  t.is(err?.name, 'AbortError')
  const resumed = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const summary = await new Trainer(resumed, options).fit(data, { resumeFrom: ckpt })
  t.true(summary.resumedAfterEpoch >= 1)
  t.deepEqual(Array.from(resumed.context()), Array.from(full.context()))
})

test('bad options get coded errors', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const codeOf = (f: () => unknown) => {
    try {
      f()
    } catch (e) {
      return (e as PromptclipError).code
    }
    return 'none'
  }
  t.is(
    codeOf(() => PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 0 })),
    'E_INVALID_ARGUMENT',
  )
  t.is(
    codeOf(() => PromptLearner.coop(clip, { classNames: CLASSES, position: 'left' as never })),
    'E_INVALID_ARGUMENT',
  )
  t.is(
    codeOf(() => PromptLearner.coop(clip, { classNames: [] })),
    'E_INVALID_ARGUMENT',
  )
  t.is(
    codeOf(() => PromptLearner.coop(clip, { classNames: ['a', 'a'] })),
    'E_INVALID_ARGUMENT',
  )
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await t.throwsAsync(new Trainer(learner).fit({ images: [], labels: [] }), { message: /empty/ })
  await t.throwsAsync(new Trainer(learner).fit({ images: ['a.png'], labels: [7] }), { message: /labels\[0\] = 7/ })
  // Training options are checked by the core, which names the field.
  await t.throwsAsync(new Trainer(learner, { epochs: 0 }).fit(dataset(1, 1)), { message: /epochs/ })
  await t.throwsAsync(new Trainer(learner, { epoch: 3 } as never).fit(dataset(1, 1)), {
    instanceOf: PromptclipError,
    message: /has no option epoch/,
  })
})

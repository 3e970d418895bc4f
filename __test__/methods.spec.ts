import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import {
  AbortError,
  Clip,
  Evaluator,
  loadImageFolder,
  loadSplitFile,
  PromptclipError,
  PromptLearner,
  readIdx,
  Trainer,
} from 'promptclip'
import { CLASSES, dataset, HF_MODEL, present } from './helpers'

const tmp = () => mkdtempSync(join(tmpdir(), 'promptclip-'))

test('KgCoOp through the same seam: defaults, training, save/load, new classes', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const learner = PromptLearner.kgcoop(clip, { classNames: CLASSES })
  t.like(learner.info, {
    method: 'kgcoop',
    options: { nCtx: 4, ctxInit: 'a photo of a', w: 8, template: 'a photo of a {}.', classSpecific: false },
  })
  const summary = await new Trainer(learner, { epochs: 12, batchSize: 8, lr: 0.02, augment: false }).fit(dataset(4, 31))
  t.true(present(summary.epochLoss.at(-1)) < summary.epochLoss[1], `loss ${summary.epochLoss.join(' ')}`)
  const path = join(tmp(), 'kg.safetensors')
  await learner.save(path)
  const loaded = await PromptLearner.load(clip, path)
  t.deepEqual(loaded.info, learner.info)
  const images = dataset(1, 5).images
  const a = await learner.predict(images, { classNames: ['crimson', 'lime'] })
  const b = await loaded.predict(images, { classNames: ['crimson', 'lime'] })
  t.deepEqual(
    a.map((p) => Array.from(present(p.probabilities))),
    b.map((p) => Array.from(present(p.probabilities))),
  )
  // Unknown options are refused by name (the core checks every method's options).
  t.throws(() => PromptLearner.kgcoop(clip, { classNames: CLASSES, weight: 8 } as never), {
    instanceOf: PromptclipError,
    message: /has no option weight \(the options are .*\bw\)/,
  })
})

test('labels echo the class names as given; prompts read `_` as a space', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const names = ['golden_retriever', 'paper_crane']
  const images = dataset(1, 3).images.slice(0, 2)
  const zs = await clip.zeroShot(images, names, { topK: 2 })
  t.deepEqual(zs[0].top.map((x) => x.label).sort(), [...names].sort())
  const learner = PromptLearner.coop(clip, { classNames: names, nCtx: 2 })
  t.deepEqual(learner.info.classNames, names)
  const preds = await learner.predict(images, { topK: 2 })
  t.deepEqual(preds[0].top.map((x) => x.label).sort(), [...names].sort())
  const data = { images, labels: [0, 1] }
  for (const model of [clip, learner]) {
    const ev = await new Evaluator(model, { classNames: names }).evaluate(data)
    t.deepEqual(
      ev.perClass.map((c) => c.name),
      names,
    )
  }
  // Two names that read the same in a prompt are one class to CLIP: refused, naming both.
  t.throws(() => PromptLearner.coop(clip, { classNames: ['a b', 'a_b'] }), {
    message: /classNames\[1\] `a_b` is a duplicate of classNames\[0\] `a b`/,
  })
})

test("a dataset's class names are mapped onto the learner's by name", async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(2, 11)
  const options = { epochs: 2, batchSize: 4, augment: false, seed: 3 }
  const inOrder = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await new Trainer(inOrder, options).fit({ ...data, classNames: CLASSES })
  // The same images with the classes listed in reverse: label l now means CLASSES[3 - l].
  const reversed = [...CLASSES].reverse()
  const swapped = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await new Trainer(swapped, options).fit({
    images: data.images,
    labels: data.labels.map((l) => 3 - l),
    classNames: reversed,
  })
  t.deepEqual(Array.from(swapped.context()), Array.from(inOrder.context()))
  // Read as the learner's own order, the swapped labels train something else.
  const unmapped = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await new Trainer(unmapped, options).fit({ images: data.images, labels: data.labels.map((l) => 3 - l) })
  t.notDeepEqual(Array.from(unmapped.context()), Array.from(inOrder.context()))
  await t.throwsAsync(new Trainer(inOrder, options).fit({ ...data, classNames: ['red', 'green', 'blue', 'purple'] }), {
    instanceOf: PromptclipError,
    message: /class "purple" is not among the learner's 4 classes/,
  })
})

test('Evaluator caps top-k at the number of classes', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(1, 2)
  const ev = await new Evaluator(clip, { classNames: CLASSES.slice(0, 3), topK: [1, 5] }).evaluate({
    images: data.images.slice(0, 3),
    labels: [0, 1, 2],
  })
  t.deepEqual(
    ev.topK.map((x) => x.k),
    [1, 3],
  )
  t.is(ev.topK[1].accuracy, 100)
})

test('every error is a PromptclipError with a code, whatever raised it', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const missing = join(tmp(), 'missing')
  await t.throwsAsync(Clip.load(missing), { instanceOf: PromptclipError, code: 'E_FILE_NOT_FOUND' } as never)
  t.throws(() => loadImageFolder(missing), { instanceOf: PromptclipError, code: 'E_FILE_NOT_FOUND' } as never)
  t.throws(() => loadSplitFile(missing, missing), { instanceOf: PromptclipError, code: 'E_FILE_NOT_FOUND' } as never)
  t.throws(() => readIdx(missing), { instanceOf: PromptclipError, code: 'E_FILE_NOT_FOUND' } as never)
  // A value of the wrong type stopped by the binding's own conversion.
  t.throws(() => clip.tokenize(42 as never), { instanceOf: PromptclipError, code: 'E_INVALID_ARGUMENT' } as never)
  // The code is a property of the error the addon throws, not parsed from its message.
  const err = t.throws(() => PromptLearner.create(clip, 'coop', { classNames: [] }))
  t.is((err as PromptclipError).code, 'E_INVALID_ARGUMENT')
  t.false(err?.message.startsWith('['))
  t.is(((err as Error).cause as { code?: string }).code, 'E_INVALID_ARGUMENT')
  t.throws(() => PromptLearner.create(clip, 'no-such-method' as 'coop', { classNames: CLASSES }), {
    message: /method `no-such-method`: expected one of linear-probe, coop, cocoop, kgcoop/,
  })
  // Cancelling rejects with the web platform's AbortError, keeping a code.
  const ac = new AbortController()
  ac.abort()
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const aborted = await t.throwsAsync(new Trainer(learner).fit(dataset(1, 1), { signal: ac.signal }), {
    instanceOf: AbortError,
  })
  t.is(aborted?.name, 'AbortError')
  t.is((aborted as PromptclipError).code, 'E_CANCELLED')
})

test('a diverging run is stopped, and nothing non-finite is saved', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2, classSpecific: true })
  const err = await t.throwsAsync(
    new Trainer(learner, { epochs: 20, batchSize: 4, lr: 1e30, warmupEpochs: 0, augment: false }).fit(dataset(2, 4)),
    { instanceOf: PromptclipError },
  )
  // At lr 1e30 the first update already overflows the context (step 2 sees it): the parameter
  // check, which runs before the next loss, is what stops it.
  t.is(err?.code, 'E_NON_FINITE_PARAMS', err?.message)
  t.regex(String(err?.message), /parameter `ctx` became NaN or infinite at epoch 1, step \d+/)
  t.regex(String(err?.message), /try a lower learning rate/)
  // The context that diverged is not written.
  t.false(Array.from(learner.context()).every(Number.isFinite))
  const path = join(tmp(), 'diverged.safetensors')
  await t.throwsAsync(learner.save(path), { code: 'E_NON_FINITE_PARAMS' } as never)
  t.false(existsSync(path))
})

test('linear probe: C searched on the validation split, evaluated, saved; its own classes only', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const probe = PromptLearner.linearProbe(clip, { classNames: CLASSES })
  t.like(probe.info, { method: 'linear-probe', options: { c: null, maxIter: 1000, tol: 1e-4 } })
  t.deepEqual(probe.info.params, [
    ['weight', [4, 16]],
    ['bias', [4]],
  ])
  const train = dataset(4, 41)
  await t.throwsAsync(new Trainer(probe).fit(train), { message: /validation set/ })
  const summary = await new Trainer(probe).fit(train, { validation: dataset(2, 42) })
  const details = present(summary.details)
  t.is((details.gridAccuracy as number[]).length, 7)
  t.is((details.rounds as unknown[]).length, 8)
  t.true((details.c as number) > 0)
  const heldOut = dataset(5, 43)
  const ev = await new Evaluator(probe).evaluate(heldOut)
  const zs = await new Evaluator(clip, { classNames: CLASSES }).evaluate(heldOut)
  t.log(
    `held-out accuracy: zero-shot ${zs.accuracy.toFixed(1)}% -> linear probe ${ev.accuracy.toFixed(1)}% (C ${details.c})`,
  )
  t.true(ev.accuracy >= zs.accuracy + 20)
  const path = join(tmp(), 'probe.safetensors')
  await probe.save(path)
  const loaded = await PromptLearner.load(clip, path)
  t.deepEqual(loaded.info, probe.info)
  const a = await probe.predict(heldOut.images)
  const b = await loaded.predict(heldOut.images)
  t.deepEqual(
    a.map((p) => Array.from(present(p.probabilities))),
    b.map((p) => Array.from(present(p.probabilities))),
  )
  await t.throwsAsync(probe.predict(heldOut.images, { classNames: ['crimson', 'lime'] }), {
    message: /cannot score a different class list/,
  })
  t.throws(() => probe.context(), { code: 'E_UNSUPPORTED' } as never)
  // With C given, no validation set is needed.
  const fixed = PromptLearner.linearProbe(clip, { classNames: CLASSES, c: 1 })
  t.like((await new Trainer(fixed).fit(train)).details, { c: 1 })
})

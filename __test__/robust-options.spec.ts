import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, Evaluator, PromptLearner, Trainer } from 'promptclip'
import { HF_MODEL, IMAGES } from './helpers'

// Issue 11, as JavaScript callers meet it: options out of range, non-finite or wrapped are refused
// by name and value, before any work; pickles are refused naming safetensors.
const CLASSES = ['red', 'green']
const code = (c: string, message?: RegExp) => ({ code: c, ...(message ? { message } : {}) }) as never

test('nCtx beyond the context is refused at once, not allocated', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  for (const nCtx of [1e8, 1e7, 2 ** 32 + 4, 74]) {
    const started = performance.now()
    t.throws(() => PromptLearner.coop(clip, { classNames: CLASSES, nCtx }), code('E_INVALID_ARGUMENT', /nCtx/))
    t.true(performance.now() - started < 1000, `${nCtx}`)
  }
})

test('integers out of range and non-finite numbers are refused by name and value', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  t.throws(
    () => PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 ** 32 + 4 }),
    code('E_INVALID_ARGUMENT', /nCtx: must be a whole number.*4294967300/),
  )
  t.throws(() => PromptLearner.coop(clip, { classNames: CLASSES, seed: -1 }), code('E_INVALID_ARGUMENT', /seed.*-1/))
  for (const initStd of [Number.NaN, Number.POSITIVE_INFINITY])
    t.throws(
      () => PromptLearner.coop(clip, { classNames: CLASSES, initStd }),
      code('E_INVALID_ARGUMENT', /initStd must be a finite number/),
    )
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const data = {
    images: [join(IMAGES, 'a_landscape_320x240.jpg'), join(IMAGES, 'c_small_100x100.png')],
    labels: [0, 1],
  }
  const cases: [Record<string, number>, RegExp][] = [
    [{ epochs: 2 ** 32 + 1 }, /epochs: must be a whole number.*4294967297/],
    [{ batchSize: 2 ** 32 + 8 }, /batchSize: must be a whole number.*4294967304/],
    [{ seed: -1 }, /seed: must be a whole number.*-1/],
    [{ seed: Number.NaN }, /seed must be a finite number, got NaN/],
    [{ lr: Number.NaN }, /lr must be a finite number/],
    [{ weightDecay: Number.POSITIVE_INFINITY }, /weightDecay must be a finite number, got Infinity/],
    [{ warmupLr: Number.NaN }, /warmupLr/],
    [{ momentum: Number.NaN }, /momentum/],
  ]
  for (const [options, message] of cases)
    await t.throwsAsync(
      new Trainer(learner, { epochs: 1, augment: false, ...options }).fit(data),
      code('E_INVALID_ARGUMENT', message),
    )
  for (const topK of [[-1], [2 ** 32 + 1], [1.5]])
    await t.throwsAsync(
      new Evaluator(clip, { classNames: CLASSES, topK }).evaluate(data),
      code('E_INVALID_ARGUMENT', /topK\[0\] must be a whole number/),
    )
})

test('counts the binding takes as u32 (batch sizes, topK) are refused at 2^32, not wrapped', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const images = [join(IMAGES, 'c_small_100x100.png')]
  const big = 2 ** 32 + 4 // napi's u32 would take it as 4
  const refused = (name: string) =>
    code('E_INVALID_ARGUMENT', new RegExp(`${name} must be a positive integer up to 4294967295, got ${big}`))
  await t.throwsAsync(learner.predict(images, { batchSize: big }), refused('batchSize'))
  await t.throwsAsync(learner.predict(images, { topK: big }), refused('topK'))
  await t.throwsAsync(learner.interpret({ topK: big }), refused('topK'))
  await t.throwsAsync(clip.zeroShot(images, CLASSES, { batchSize: big }), refused('batchSize'))
  await t.throwsAsync(clip.encodeImages(images, { batchSize: big }), refused('batchSize'))
  // The largest u32 itself is a valid count.
  t.falsy((await learner.predict(images, { batchSize: 2 ** 32 - 1 }))[0].error)
})

test('resuming with a changed option names it; checkpointPath is checked before training', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-robust-'))
  const data = {
    images: [join(IMAGES, 'a_landscape_320x240.jpg'), join(IMAGES, 'c_small_100x100.png')],
    labels: [0, 1],
  }
  const checkpointPath = join(dir, 'run.ckpt')
  const options = { epochs: 1, batchSize: 2, augment: false, lr: 0.01, checkpointPath }
  await new Trainer(PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 }), options).fit(data)
  await t.throwsAsync(
    new Trainer(PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 }), { ...options, lr: 0.02 }).fit(data, {
      resumeFrom: checkpointPath,
    }),
    code('E_INVALID_ARGUMENT', /cannot resume.*lr was 0\.01, this run has 0\.02/),
  )
  const file = join(dir, 'a-file')
  writeFileSync(file, 'x')
  let steps = 0
  await t.throwsAsync(
    new Trainer(PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 }), {
      ...options,
      checkpointPath: join(file, 'run.ckpt'),
    }).fit(data, { onProgress: () => steps++ }),
    code('E_IO', /cannot write/),
  )
  t.is(steps, 0)
})

test('pickles are refused as models and learner files, naming safetensors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-pickle-'))
  const pt = join(dir, 'model.pt')
  writeFileSync(pt, Buffer.from('PK\x03\x04\x14\x00\x00\x00archive/data.pkl', 'latin1'))
  await t.throwsAsync(Clip.load(pt), code('E_UNSUPPORTED', /PyTorch pickle.*safetensors/))
  const clip = await Clip.load(HF_MODEL)
  const pth = join(dir, 'prompt.pth')
  writeFileSync(pth, Buffer.from('\x80\x02cposix\nsystem\nq\x00.', 'latin1'))
  await t.throwsAsync(PromptLearner.load(clip, pth), code('E_UNSUPPORTED', /PyTorch pickle.*safetensors/))
})

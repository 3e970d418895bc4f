import test from 'ava'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { deflateSync } from 'node:zlib'
import { Clip, Evaluator, PromptLearner, PromptclipError, Trainer, type TrainProgress } from '../ts/index'
import { HF_MODEL, OPENAI_MODEL } from './helpers'

/** A solid-colour PNG with a little deterministic noise, written by hand (no image library). */
function png(w: number, h: number, rgb: [number, number, number], seed: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    return c >>> 0
  })
  const crc = (b: Buffer) => {
    let c = 0xffffffff
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8)
    return (c ^ 0xffffffff) >>> 0
  }
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4)
    len.writeUInt32BE(data.length)
    const td = Buffer.concat([Buffer.from(type), data])
    const c = Buffer.alloc(4)
    c.writeUInt32BE(crc(td))
    return Buffer.concat([len, td, c])
  }
  let s = seed
  const rand = () => ((s = (s * 1103515245 + 12345) & 0x7fffffff), s / 0x7fffffff)
  const raw = Buffer.alloc((w * 3 + 1) * h)
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0
    for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) raw[y * (w * 3 + 1) + 1 + x * 3 + c] = Math.max(0, Math.min(255, rgb[c] + Math.round((rand() - 0.5) * 40)))
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))])
}

const CLASSES = ['red', 'green', 'blue', 'yellow']
const RGB: [number, number, number][] = [[220, 40, 40], [40, 200, 60], [40, 70, 220], [230, 220, 40]]
function dataset(perClass: number, seed: number) {
  const images: Buffer[] = []
  const labels: number[] = []
  for (let i = 0; i < perClass; i++) RGB.forEach((rgb, c) => (images.push(png(36 + ((i * 7) % 20), 40, rgb, seed + i * 10 + c)), labels.push(c)))
  return { images, labels }
}

test('CoOp trains from TypeScript: loss falls, held-out accuracy beats zero-shot, progress and metrics', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const train = dataset(8, 1)
  const test_ = dataset(5, 500)
  const zeroShot = await new Evaluator(clip, { classNames: CLASSES }).evaluate(test_)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 4, classSpecific: true, seed: 2 })
  t.like(learner.info, { method: 'coop', nCtx: 4, classSpecific: true, position: 'end', ctxDim: 32 })
  const progress: TrainProgress[] = []
  let busy: string | undefined
  const summary = await new Trainer(learner, { epochs: 30, batchSize: 8, lr: 0.01, augment: false, seed: 3 }).fit(train, {
    onProgress: (p) => {
      progress.push(p)
      if (busy === undefined) {
        try {
          learner.context() // the training task holds the learner: this must not block the event loop
          busy = 'none'
        } catch (e) {
          busy = (e as PromptclipError).code
        }
      }
    },
  })
  // Progress events can arrive after training ends, so either answer is valid; never a hang.
  t.true(busy === 'E_BUSY' || busy === 'none')
  t.is(summary.epochLoss.length, 30)
  t.true(summary.epochLoss[29] < 0.5 * summary.epochLoss[1], `loss ${summary.epochLoss[1]} -> ${summary.epochLoss[29]}`)
  t.is(progress.length, 30 * 4)
  t.deepEqual(Object.keys(progress[0]).sort(), ['epoch', 'epochAccuracy', 'epochLoss', 'epochs', 'globalStep', 'loss', 'lr', 'step', 'stepsPerEpoch'].sort())
  t.is(progress[0].lr, 1e-5) // warmup epoch
  t.is(progress[4].lr, 0.01)
  const ev = await new Evaluator(learner, { topK: [1, 2] }).evaluate(test_)
  t.log(`held-out accuracy: zero-shot ${zeroShot.accuracy.toFixed(1)}% -> CoOp ${ev.accuracy.toFixed(1)}%`)
  t.true(ev.accuracy >= zeroShot.accuracy + 20)
  t.is(ev.total, 20)
  t.is(ev.perClass.length, 4)
  t.is(ev.confusion.flat().reduce((a, b) => a + b, 0), 20)
  t.true(Math.abs(ev.errorRate + ev.accuracy - 100) < 1e-9)
  t.deepEqual(ev.topK.map((x) => x.k), [1, 2])
  const preds = await learner.predict(test_.images.slice(0, 3), { topK: 2 })
  t.is(preds[0].top.length, 2)
  t.true(CLASSES.includes(preds[0].top[0].label))
})

test('save, load, predict with new class names, interpret', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, ctxInit: 'a photo of a', position: 'middle' })
  t.is(learner.info.nCtx, 4)
  const rows = await learner.interpret({ topK: 2 })
  t.deepEqual(rows.map((r) => r.tokens[0].token), ['a', 'photo', 'of', 'a'])
  const path = join(mkdtempSync(join(tmpdir(), 'promptclip-')), 'prompt.safetensors')
  await learner.save(path)
  const loaded = await PromptLearner.load(clip, path)
  t.deepEqual(loaded.info, learner.info)
  t.deepEqual(Array.from(loaded.context()), Array.from(learner.context()))
  const images = dataset(1, 9).images
  const preds = await loaded.predict(images, { classNames: ['crimson', 'lime'], topK: 1 })
  t.true(preds.every((p) => p.probabilities?.length === 2))
  const other = await Clip.load(OPENAI_MODEL)
  const err = await t.throwsAsync(PromptLearner.load(other, path), { instanceOf: PromptclipError })
  t.regex(err!.message, /text width/)
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
    new Trainer(interrupted, options).fit(data, { signal: ac.signal, onProgress: (p) => p.epoch === 1 && ac.abort() }),
    { instanceOf: PromptclipError },
  )
  t.is(err?.code, 'E_CANCELLED')
  const resumed = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const summary = await new Trainer(resumed, options).fit(data, { resumeFrom: ckpt })
  t.true(summary.startEpoch >= 1)
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
  t.is(codeOf(() => PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 0 })), 'E_INVALID_ARGUMENT')
  t.is(codeOf(() => PromptLearner.coop(clip, { classNames: CLASSES, position: 'left' as never })), 'E_INVALID_ARGUMENT')
  t.is(codeOf(() => PromptLearner.coop(clip, { classNames: [] })), 'E_INVALID_ARGUMENT')
  t.is(codeOf(() => PromptLearner.coop(clip, { classNames: ['a', 'a'] })), 'E_INVALID_ARGUMENT')
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await t.throwsAsync(new Trainer(learner).fit({ images: [], labels: [] }), { message: /empty/ })
  await t.throwsAsync(new Trainer(learner).fit({ images: ['a.png'], labels: [7] }), { message: /labels\[0\] = 7/ })
  t.throws(() => new Trainer(learner, { epochs: 0 }), { message: /epochs/ })
})

import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import {
  Clip,
  type EncodeImagesOptions,
  type EvaluateOptions,
  Evaluator,
  PromptclipError,
  PromptLearner,
  Trainer,
} from 'promptclip'
import { CLASSES, dataset, HF_MODEL, present } from './helpers'

type BatchProgress = Parameters<NonNullable<EncodeImagesOptions['onProgress']>>[0]
type EvaluateProgress = Parameters<NonNullable<EvaluateOptions['onProgress']>>[0]

/** `done` strictly increases, ends at `total`, and `total` never changes. */
function checkSequence(t: import('ava').ExecutionContext, seen: BatchProgress[], total: number): void {
  t.true(seen.length > 0)
  for (const [i, p] of seen.entries()) {
    t.is(p.total, total)
    if (i > 0) t.true(p.done > seen[i - 1].done, `done ${seen[i - 1].done} then ${p.done}`)
  }
  t.is(seen[seen.length - 1].done, total)
}

test('encodeImages, zeroShot, predict and evaluate report progress per batch, results unchanged', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(3, 11) // 12 images
  const seen: BatchProgress[] = []
  const a = await clip.encodeImages(data.images, { batchSize: 5, onProgress: (p) => seen.push(p) })
  t.deepEqual(
    seen.map((p) => p.done),
    [5, 10, 12],
  ) // every event delivered before the call resolved
  checkSequence(t, seen, 12)
  const b = await clip.encodeImages(data.images, { batchSize: 5 })
  t.deepEqual(
    a.embeddings.map((e) => Array.from(present(e))),
    b.embeddings.map((e) => Array.from(present(e))),
  )

  const zs: BatchProgress[] = []
  const z1 = await clip.zeroShot(data.images, CLASSES, { batchSize: 4, onProgress: (p) => zs.push(p) })
  checkSequence(t, zs, 12)
  t.is(zs.length, 3)
  const z2 = await clip.zeroShot(data.images, CLASSES, { batchSize: 4 })
  t.deepEqual(
    z1.map((p) => Array.from(present(p.probabilities))),
    z2.map((p) => Array.from(present(p.probabilities))),
  )

  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const pp: BatchProgress[] = []
  const p1 = await learner.predict(data.images, { batchSize: 7, onProgress: (p) => pp.push(p) })
  checkSequence(t, pp, 12)
  const p2 = await learner.predict(data.images, { batchSize: 7 })
  t.deepEqual(
    p1.map((p) => Array.from(present(p.probabilities))),
    p2.map((p) => Array.from(present(p.probabilities))),
  )

  for (const model of [clip, learner]) {
    const ev: EvaluateProgress[] = []
    const e1 = await new Evaluator(model, { classNames: CLASSES }).evaluate(data, {
      batchSize: 5,
      onProgress: (p) => ev.push(p),
    })
    checkSequence(t, ev, 12)
    for (const p of ev) {
      t.true(Number.isFinite(p.imagesPerSecond) && p.imagesPerSecond > 0)
      t.true(p.etaSeconds >= 0)
    }
    t.is(ev[ev.length - 1].etaSeconds, 0)
    const e2 = await new Evaluator(model, { classNames: CLASSES }).evaluate(data, { batchSize: 5 })
    t.deepEqual(e1, e2)
  }
})

test('a progress callback that throws makes the call reject with its error', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(3, 12)
  const boom = new Error('boom')
  let calls = 0
  const thrower = () => {
    calls++
    throw boom
  }
  t.is(await t.throwsAsync(clip.encodeImages(data.images, { batchSize: 2, onProgress: thrower })), boom)
  t.is(calls, 1) // later events are dropped
  t.is(await t.throwsAsync(clip.zeroShot(data.images, CLASSES, { batchSize: 2, onProgress: thrower })), boom)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  t.is(await t.throwsAsync(learner.predict(data.images, { batchSize: 2, onProgress: thrower })), boom)
  t.is(await t.throwsAsync(new Evaluator(learner).evaluate(data, { batchSize: 2, onProgress: thrower })), boom)
  t.is(await t.throwsAsync(new Trainer(learner, { epochs: 2, batchSize: 4 }).fit(data, { onProgress: thrower })), boom)
  // The learner is usable afterwards, and Node is still running.
  t.is(learner.context().length, 2 * 32)
  t.is((await clip.encodeImages(data.images.slice(0, 1))).failures.length, 0)
})

/** A 24-bit BMP of the RGB pixels (bottom-up rows, padded to 4 bytes). */
function bmp(w: number, h: number, px: (x: number, y: number) => [number, number, number]): Buffer {
  const row = Math.ceil((w * 3) / 4) * 4
  const buf = Buffer.alloc(54 + row * h)
  buf.write('BM', 0)
  buf.writeUInt32LE(buf.length, 2)
  buf.writeUInt32LE(54, 10)
  buf.writeUInt32LE(40, 14)
  buf.writeInt32LE(w, 18)
  buf.writeInt32LE(h, 22)
  buf.writeUInt16LE(1, 26)
  buf.writeUInt16LE(24, 28)
  buf.writeUInt32LE(row * h, 34)
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const [r, g, b] = px(x, y)
      buf.set([b, g, r], 54 + (h - 1 - y) * row + x * 3)
    }
  }
  return buf
}

/** A GIF of palette indices: LZW with a clear code before the table would widen the codes. */
function gif(w: number, h: number, palette: [number, number, number][], index: (x: number, y: number) => number) {
  const codes: number[] = []
  for (let i = 0; i < w * h; i++) {
    if (i % 250 === 0) codes.push(256) // clear: codes stay 9 bits
    codes.push(index(i % w, Math.floor(i / w)))
  }
  codes.push(257)
  const bytes: number[] = []
  let acc = 0
  let bits = 0
  for (const c of codes) {
    acc |= c << bits
    bits += 9
    while (bits >= 8) {
      bytes.push(acc & 0xff)
      acc >>>= 8
      bits -= 8
    }
  }
  if (bits > 0) bytes.push(acc & 0xff)
  const blocks: number[] = []
  for (let i = 0; i < bytes.length; i += 255) {
    const part = bytes.slice(i, i + 255)
    blocks.push(part.length, ...part)
  }
  const table = Buffer.alloc(256 * 3)
  for (const [i, c] of palette.entries()) table.set(c, i * 3)
  const screen = Buffer.alloc(7)
  screen.writeUInt16LE(w, 0)
  screen.writeUInt16LE(h, 2)
  screen[4] = 0xf7 // global table of 256 colours
  const image = Buffer.alloc(10)
  image[0] = 0x2c
  image.writeUInt16LE(w, 5)
  image.writeUInt16LE(h, 7)
  return Buffer.concat([Buffer.from('GIF89a'), screen, table, image, Buffer.from([8, ...blocks, 0, 0x3b])])
}

test('BMP and GIF images give the same embeddings as raw pixels of the same image', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const palette: [number, number, number][] = [
    [200, 30, 40],
    [20, 160, 90],
    [30, 60, 210],
    [240, 230, 20],
  ]
  const [w, h] = [47, 39]
  const index = (x: number, y: number) => (Math.floor(x / 8) + Math.floor(y / 6)) % 4
  const raw = new Uint8Array(w * h * 3)
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set(palette[index(x, y)], (y * w + x) * 3)
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-'))
  const bmpBytes = bmp(w, h, (x, y) => palette[index(x, y)])
  const gifBytes = gif(w, h, palette, index)
  writeFileSync(join(dir, 'a.bmp'), bmpBytes)
  writeFileSync(join(dir, 'a.gif'), gifBytes)
  const out = await clip.encodeImages([
    { width: w, height: h, channels: 3, data: raw },
    bmpBytes,
    gifBytes,
    join(dir, 'a.bmp'),
    join(dir, 'a.gif'),
  ])
  t.deepEqual(out.failures, [])
  const first = Array.from(present(out.embeddings[0]))
  for (const e of out.embeddings.slice(1)) t.deepEqual(Array.from(present(e)), first)
  // A corrupt one is named.
  writeFileSync(join(dir, 'broken.gif'), gifBytes.subarray(0, 100))
  const bad = await clip.encodeImages([join(dir, 'broken.gif')])
  t.is(bad.failures[0].code, 'E_IMAGE_DECODE')
  t.regex(bad.failures[0].message, /broken\.gif/)
})

test('unreadable training images fail by name, or are skipped and reported', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(2, 13)
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-'))
  const missing = join(dir, 'missing.png')
  const withBad = { images: [...data.images, missing], labels: [...data.labels, 0] }
  const options = { epochs: 1, batchSize: 4, augment: false }
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const err = await t.throwsAsync(new Trainer(learner, options).fit(withBad), { instanceOf: PromptclipError })
  t.is(err?.code, 'E_FILE_NOT_FOUND')
  t.regex(err?.message ?? '', /training image 8 .*missing\.png/)
  const summary = await new Trainer(learner, { ...options, skipUnreadable: true }).fit(withBad)
  t.is(summary.skipped.length, 1)
  t.like(summary.skipped[0], { index: 8, code: 'E_FILE_NOT_FOUND' })
  t.regex(summary.skipped[0].message, /missing\.png/)
  t.deepEqual((await new Trainer(learner, options).fit(data)).skipped, [])
})

test('an AbortSignal mid-epoch checkpoints there; resuming gives the uninterrupted result', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const data = dataset(4, 14) // 16 images, 4 steps an epoch
  const ckpt = join(mkdtempSync(join(tmpdir(), 'promptclip-')), 'run.ckpt')
  const options = { epochs: 2, batchSize: 4, seed: 9, checkpointPath: ckpt, checkpointEvery: 5 }
  const full = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  await new Trainer(full, options).fit(data)

  const interrupted = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const ac = new AbortController()
  const err = await t.throwsAsync(
    new Trainer(interrupted, options).fit(data, {
      signal: ac.signal,
      onProgress: (p) => p.globalStep === 2 && ac.abort(),
    }),
    { instanceOf: PromptclipError },
  )
  t.is(err?.code, 'E_CANCELLED')
  t.is(err?.name, 'AbortError')
  t.true(err?.message.includes(ckpt), err?.message)
  const resumed = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 2 })
  const summary = await new Trainer(resumed, options).fit(data, { resumeFrom: ckpt })
  t.is(summary.resumedAfterEpoch, 0)
  t.true(summary.resumedAtStep >= 2, `resumed at step ${summary.resumedAtStep}`)
  t.is(summary.globalStep, 8)
  t.deepEqual(Array.from(resumed.context()), Array.from(full.context()))
})

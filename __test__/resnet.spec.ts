// CLIP with a ResNet image tower (OpenAI's ModifiedResNet) through the public API: the tiny
// open_clip model of fixtures/resnet/ (scripts/make_resnet_fixtures.py). The Rust tests compare
// every stage with open_clip; here: what the API reports, text embeddings against open_clip,
// training and prediction on new class names, and the error for an unknown image tower.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { Clip, PromptLearner, Trainer } from 'promptclip'
import { CLASSES, dataset, FIXTURES, maxRelErr, readSafetensors } from './helpers'

const RN = join(FIXTURES, 'resnet', 'tiny-rn.safetensors')

test('a ResNet CLIP loads and reports its shapes as OpenAI build_model infers them', async (t) => {
  const clip = await Clip.load(RN)
  t.like(clip.info, {
    visionArch: 'resnet',
    resnetLayers: [1, 2, 1, 1],
    visionWidth: 16,
    visionLayers: 5,
    imageSize: 64,
    patchSize: 32,
    embedDim: 24,
    textWidth: 64,
    naming: 'openai',
  })
  const vit = await Clip.load(join(FIXTURES, 'tiny-clip-openai.safetensors'))
  t.is(vit.info.visionArch, 'vit')
  t.is(vit.info.resnetLayers, undefined)
})

test('ResNet CLIP text embeddings equal open_clip', async (t) => {
  const clip = await Clip.load(RN)
  const r = readSafetensors(join(FIXTURES, 'resnet', 'tiny-rn-reference.safetensors'))
  const texts = ['a photo of a dog.', 'a photo of a cat.', 'an origami crane, folded from paper', 'x']
  const ours = await clip.encodeTexts(texts)
  const err = maxRelErr(
    ours.flatMap((v) => Array.from(v)),
    r.text_embeds.data,
  )
  t.true(err < 1e-4, `relative error ${err}`)
})

test('CoOp trains on a ResNet CLIP and predicts for new class names', async (t) => {
  const clip = await Clip.load(RN)
  const learner = PromptLearner.coop(clip, { classNames: CLASSES, nCtx: 4, seed: 1 })
  const summary = await new Trainer(learner, { epochs: 6, batchSize: 8, lr: 0.01, augment: false, seed: 2 }).fit(
    dataset(4, 1),
  )
  t.is(summary.epochLoss.length, 6)
  t.true(summary.epochLoss.every(Number.isFinite))
  t.true(summary.epochLoss[5] < summary.epochLoss[0], `loss ${summary.epochLoss[0]} -> ${summary.epochLoss[5]}`)
  const { images } = dataset(1, 9)
  const predictions = await learner.predict(images, { classNames: ['cat', 'sea turtle', 'red'], topK: 2 })
  t.is(predictions.length, images.length)
  for (const p of predictions) {
    t.is(p.top.length, 2)
    t.true(['cat', 'sea turtle', 'red'].includes(p.top[0].label))
  }
})

test('an image tower that is neither a ViT nor a ResNet is refused, naming the tensors', async (t) => {
  // The attention pool's tensors renamed (their bytes kept in place): the tower is then neither
  // layout.
  const raw = readFileSync(RN)
  const n = Number(raw.readBigUInt64LE(0))
  const header = JSON.parse(raw.subarray(8, 8 + n).toString('utf8'))
  for (const k of Object.keys(header)) {
    if (!k.startsWith('visual.attnpool.')) continue
    header[k.replace('attnpool', 'pool')] = header[k]
    delete header[k]
  }
  const h = Buffer.from(JSON.stringify(header))
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(h.length))
  const path = join(mkdtempSync(join(tmpdir(), 'promptclip-rn-')), 'odd.safetensors')
  writeFileSync(path, Buffer.concat([len, h, raw.subarray(8 + n)]))
  const err = await t.throwsAsync(Clip.load(path), { code: 'E_UNSUPPORTED' } as never)
  for (const name of ['odd.safetensors', 'visual.attnpool.positional_embedding', 'visual.transformer.resblocks.0']) {
    t.true(err?.message.includes(name), `${name} not in: ${err?.message}`)
  }
})

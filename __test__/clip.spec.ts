import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { Clip, cudaCompiled, PromptclipError } from 'promptclip'
import {
  dot,
  FIXTURES,
  HF_MODEL,
  IMAGES,
  maxRelErr,
  normalize,
  OPENAI_MODEL,
  present,
  readSafetensors,
} from './helpers'

const images = readdirSync(IMAGES)
  .filter((f) => /\.(png|jpe?g|webp)$/.test(f))
  .sort()
  .map((f) => join(IMAGES, f))
const REFERENCE_TEXTS = ['a photo of a dog.', 'a photo of a cat.', 'an origami crane, folded from paper', 'x']

test('loads a Hugging Face folder and reports its shapes', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  t.like(clip.info, {
    embedDim: 16,
    imageSize: 32,
    patchSize: 8,
    contextLength: 77,
    vocabSize: 49408,
    textWidth: 32,
    naming: 'huggingface',
    textActivation: 'gelu',
    device: 'cpu',
    dtype: 'fp32',
  })
  const half = await Clip.load(HF_MODEL, { dtype: 'bf16' })
  t.is(half.info.dtype, 'bf16')
  const [a] = await clip.encodeTexts(['a photo of a dog.'])
  const [b] = await half.encodeTexts(['a photo of a dog.'])
  t.true(maxRelErr(b, a) < 0.05)
  await t.throwsAsync(Clip.load(HF_MODEL, { dtype: 'fp8' as never }), { code: 'E_INVALID_ARGUMENT' } as never)
})

test('loads an OpenAI-named safetensors file', async (t) => {
  const clip = await Clip.load(OPENAI_MODEL)
  t.like(clip.info, {
    embedDim: 24,
    imageSize: 48,
    patchSize: 16,
    textWidth: 64,
    visionWidth: 128,
    naming: 'openai',
    textActivation: 'quick_gelu',
  })
})

test('tokenizes exactly as CLIP', async (t) => {
  const clip = await Clip.load(OPENAI_MODEL)
  t.deepEqual(clip.tokenize(['a photo of a dog.']), [[49406, 320, 1125, 539, 320, 1929, 269, 49407]])
})

for (const [name, model, ref] of [
  ['hf', HF_MODEL, 'reference-hf.safetensors'],
  ['openai', OPENAI_MODEL, 'reference-openai.safetensors'],
] as const) {
  test(`text embeddings equal transformers (${name})`, async (t) => {
    const clip = await Clip.load(model)
    const r = readSafetensors(join(FIXTURES, ref))
    const ours = await clip.encodeTexts(REFERENCE_TEXTS)
    const dim = clip.info.embedDim
    const err = maxRelErr(
      ours.flatMap((v) => Array.from(v)),
      r.text_embeds.data,
    )
    t.is(ours.length, 4)
    t.is(ours[0].length, dim)
    t.true(err < 1e-4, `relative error ${err}`)
  })
}

test('zero-shot probabilities follow CLIP logits and prompt ensembling', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const classes = ['dog', 'cat', 'paper_crane']
  const templates = ['a photo of a {}.', 'a drawing of a {}.']
  const preds = await clip.zeroShot(images, classes, { templates, topK: 2 })
  t.is(preds.length, images.length)
  // Independent computation from the raw encoders: mean of normalised template features per class.
  const { embeddings } = await clip.encodeImages(images)
  const prompts = classes.flatMap((c) => templates.map((tpl) => tpl.replace('{}', c.replace('_', ' '))))
  const feats = (await clip.encodeTexts(prompts)).map(normalize)
  const classEmb = classes.map((_, k) => normalize(feats[2 * k].map((x, i) => (x + feats[2 * k + 1][i]) / 2)))
  const scale = clip.info.logitScale // the multiplier itself, exp of the stored log value
  t.true(scale > 1)
  for (const p of preds) {
    t.is(p.error, undefined)
    const img = normalize(present(embeddings[p.index]))
    const logits = classEmb.map((c) => scale * dot(img, c))
    const m = Math.max(...logits)
    const z = logits.reduce((s, l) => s + Math.exp(l - m), 0)
    const expected = logits.map((l) => Math.exp(l - m) / z)
    t.true(maxRelErr(present(p.probabilities), expected) < 1e-4)
    t.is(p.top.length, 2)
    t.true(p.top[0].probability >= p.top[1].probability)
    // Labels echo the caller's names; only the prompts read `_` as a space.
    t.is(p.top[0].label, classes[p.top[0].index])
  }
})

test('Buffers and paths give the same embeddings; a bad input is reported, not fatal', async (t) => {
  const clip = await Clip.load(HF_MODEL)
  const corrupt = Buffer.from('this is not an image')
  const out = await clip.encodeImages(
    [images[0], readFileSync(images[0]), corrupt, join(IMAGES, 'missing.png'), images[1]],
    { batchSize: 2 },
  )
  t.deepEqual(Array.from(present(out.embeddings[0])), Array.from(present(out.embeddings[1])))
  t.is(out.embeddings[2], null)
  t.is(out.embeddings[3], null)
  t.truthy(out.embeddings[4])
  t.deepEqual(
    out.failures.map((f) => [f.index, f.code]),
    [
      [2, 'E_IMAGE_DECODE'],
      [3, 'E_FILE_NOT_FOUND'],
    ],
  )
  t.regex(out.failures[1].message, /missing\.png/)
  const preds = await clip.zeroShot([corrupt, images[0]], ['dog', 'cat'])
  t.is(preds[0].error?.code, 'E_IMAGE_DECODE')
  t.is(preds[0].probabilities, null)
  t.truthy(preds[1].probabilities)
})

test('errors carry stable codes and name what is wrong', async (t) => {
  const missing = await t.throwsAsync(Clip.load(join(FIXTURES, 'nope')), {
    instanceOf: PromptclipError,
    message: /nope/,
  })
  t.is(missing?.code, 'E_FILE_NOT_FOUND')
  const clip = await Clip.load(HF_MODEL)
  const empty = await t.throwsAsync(clip.zeroShot(images, []), { instanceOf: PromptclipError })
  t.is(empty?.code, 'E_INVALID_ARGUMENT')
  await t.throwsAsync(clip.zeroShot(images, ['dog', 'Dog']), { message: /duplicate/ })
  const tpl = await t.throwsAsync(clip.zeroShot(images, ['dog'], { templates: ['no placeholder'] }))
  t.is((tpl as PromptclipError).code, 'E_INVALID_ARGUMENT')
  await t.throwsAsync(clip.encodeImages(images, { batchSize: 0 }), { code: 'E_INVALID_ARGUMENT' } as never)
  if (!cudaCompiled()) {
    const cuda = await t.throwsAsync(Clip.load(HF_MODEL, { device: 'cuda' }), { instanceOf: PromptclipError })
    t.is(cuda?.code, 'E_CUDA_UNAVAILABLE')
  }
})

test('heavy work runs off the main thread', async (t) => {
  const clip = await Clip.load(OPENAI_MODEL)
  let ticks = 0
  const timer = setInterval(() => ticks++, 1)
  const many = Array.from({ length: 48 }, (_, i) => images[i % images.length])
  await clip.encodeImages(many)
  clearInterval(timer)
  t.true(ticks > 0, 'the event loop kept running while images were encoded')
})
